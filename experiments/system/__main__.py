from experiments.system.cli import run

run()
