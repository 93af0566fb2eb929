"""experiments.system.runner: bad arguments are refused, naming their flag, before
anything starts."""
import pytest

from experiments.system.runner import check_arguments
from experiments.system.workdir import SystemRunError


@pytest.mark.parametrize("kwargs, flag", [
    (dict(sensors=0), "--sensors"), (dict(sensors=65), "--sensors"), (dict(fps=0), "--fps"),
    (dict(link_kbps=-1.0), "--link_kbps"), (dict(frames=-1), "--frames"),
    (dict(passes=0), "--passes"), (dict(mode="soft", bucket_bytes=100.0), "--bucket_bytes"),
    (dict(outages=[(3.0, 1.0)]), "--link_down"), (dict(replicas=0), "--replicas")])
def test_bad_arguments_name_their_flag(kwargs, flag):
    args = dict(sensors=1, fps=1.0, frames=0, link_kbps=None, budget_bytes=None,
                bucket_bytes=None, mode="hard", replicas=1, timeout_s=10.0, outages=(), passes=1)
    args.update(kwargs)
    with pytest.raises(SystemRunError, match=flag):
        check_arguments(**args)
