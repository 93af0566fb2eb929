"""The running system: sensors stream encoded payloads over capped links to the experts
served on Ray Serve (``python -m experiments.system``; README "The system")."""
