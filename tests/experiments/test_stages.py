"""experiments.stages: stage keys, content fingerprints of rebuilt artefacts, corrupt keys."""
import json
import os
import zipfile

import numpy as np
import pytest

from experiments.stages import (StageKey, StageMismatch, Workdir, content_record, file_digest,
                                read_json, write_json)


def _npz(path, **arrays):
    np.savez(path, **arrays)


def _keys(root):
    """A three-stage chain a -> b -> c with one artefact each (a fresh run's objects)."""
    wd = Workdir(root)
    a = StageKey(wd, "a", dict(x=1), artefacts=["a.npz"], protected=True)
    b = StageKey(wd, "b", dict(y=2), parent=a, artefacts=["b.json"])
    c = StageKey(wd, "c", dict(z=3), parent=b, artefacts=["c.json"])
    return wd, a, b, c


def _first_run(root, values=(1.0, 2.0)):
    wd, a, b, c = _keys(root)
    a.claim()
    _npz(wd.path("a.npz"), v=np.array(values))
    b.claim()
    write_json(wd.path("b.json"), dict(sum=float(np.sum(values)), seconds=1.5))
    c.claim()
    write_json(wd.path("c.json"), dict(made_from="b"))
    return wd


def _rebuild_a(root, values):
    """A later run after a.npz was deleted: a rebuilt with ``values``, then b and c claimed
    as the pipeline does (each after the stage before it ran)."""
    wd, a, b, c = _keys(root)
    os.remove(wd.path("a.npz"))
    a.claim()
    _npz(wd.path("a.npz"), v=np.array(values))
    b.claim()
    if not os.path.exists(wd.path("b.json")):  # b rebuilt from the new a
        write_json(wd.path("b.json"), dict(sum=float(np.sum(values)), seconds=2.5))
    c.claim()
    return wd


def test_an_identical_rebuild_keeps_the_later_stages(tmp_path, capsys):
    root = tmp_path / "wd"
    _first_run(root)
    os.utime(root / "a.npz", ns=(1, 1))  # another mtime: the digest is read again
    wd = _rebuild_a(root, (1.0, 2.0))
    assert read_json(wd.path("c.json")) == dict(made_from="b")
    assert read_json(wd.path("b.json"))["seconds"] == 1.5  # not rebuilt
    assert not os.path.exists(wd.path("superseded"))
    assert "rebuilt and differ" not in capsys.readouterr().out


def test_a_rebuild_that_differs_supersedes_what_was_made_from_it(tmp_path, capsys):
    root = tmp_path / "wd"
    _first_run(root)
    old = read_json(str(root / "stages" / "b.json"))["inputs"]["fingerprint"]
    wd = _rebuild_a(root, (1.0, 3.0))
    out = capsys.readouterr().out
    assert "[b] the a artefacts were rebuilt and differ" in out
    moved = [d for d in os.listdir(wd.path("superseded"))]
    assert any(d.startswith("b-") and d.endswith(f"-inputs-{old}") for d in moved)
    assert read_json(wd.path("b.json"))["sum"] == 4.0  # rebuilt from the new a
    # b was rebuilt with other content, so c (made from the old b) went too
    assert "[c] the b artefacts were rebuilt and differ" in out
    assert not os.path.exists(wd.path("c.json"))
    assert any(d.startswith("c-") for d in moved)
    # the next run with nothing rebuilt keeps everything
    wd, a, b, c = _keys(root)
    for key in (a, b, c):
        key.claim()
    assert os.path.exists(wd.path("b.json"))
    assert "rebuilt" not in capsys.readouterr().out


def test_a_key_without_an_inputs_record_is_trusted(tmp_path):
    """Workdirs made before the record existed keep their stages."""
    root = tmp_path / "wd"
    _first_run(root)
    for name in ("b", "c"):
        path = str(root / "stages" / f"{name}.json")
        record = read_json(path)
        del record["inputs"]
        write_json(path, record)
    wd = _rebuild_a(root, (5.0, 6.0))
    assert os.path.exists(wd.path("b.json")) and os.path.exists(wd.path("c.json"))
    assert "inputs" in read_json(wd.path("stages", "b.json"))  # recorded from now on


def test_npz_and_json_digests_ignore_write_times_and_timings(tmp_path):
    payload = np.arange(6.0).tobytes()
    for name, when in (("x.npz", (2020, 1, 1, 0, 0, 0)), ("y.npz", (2024, 6, 1, 12, 0, 0))):
        with zipfile.ZipFile(tmp_path / name, "w") as z:
            z.writestr(zipfile.ZipInfo("v.npy", date_time=when), payload)
    assert (tmp_path / "x.npz").read_bytes() != (tmp_path / "y.npz").read_bytes()
    assert file_digest(str(tmp_path / "x.npz")) == file_digest(str(tmp_path / "y.npz"))
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("v.npy", payload[:-1] + b"\x01")
    assert file_digest(str(tmp_path / "z.npz")) != file_digest(str(tmp_path / "x.npz"))
    (tmp_path / "h1.json").write_text(json.dumps([{"loss": 1.0, "seconds": 3.1}]))
    (tmp_path / "h2.json").write_text(json.dumps([{"loss": 1.0, "seconds": 9.9}]))
    (tmp_path / "h3.json").write_text(json.dumps([{"loss": 1.5, "seconds": 3.1}]))
    d = [file_digest(str(tmp_path / f"h{i}.json")) for i in (1, 2, 3)]
    assert d[0] == d[1] != d[2]


def test_content_leaves_out_volatile_files_and_other_stages_artefacts(tmp_path):
    wd = Workdir(tmp_path / "wd")
    model = wd.path("experts", "e0")
    os.makedirs(os.path.join(model, "variables"))
    os.makedirs(wd.path("experts", "e0.ckpt", "logs", "train"))
    with open(os.path.join(model, "variables", "variables.data-00000-of-00001"), "wb") as f:
        f.write(b"weights")
    experts = StageKey(wd, "experts", {}, artefacts=["experts"])
    before = experts.content()
    assert sorted(before["files"]) == ["experts/e0/variables/variables.data-00000-of-00001"]
    for volatile in ("e0/saved_model.pb", "e0/fingerprint.pb", "e0.ckpt/checkpoint",
                     "e0.ckpt/logs/train/events.out.tfevents.1.host"):
        with open(wd.path("experts", volatile), "w") as f:
            f.write("changes every time")
    assert experts.content()["fingerprint"] == before["fingerprint"]
    # a file that another stage names inside cache/ is that stage's (the --eval_data caches)
    cache = StageKey(wd, "cache", {}, parent=experts, artefacts=["cache"])
    StageKey(wd, "eval_data", {}, parent=experts, artefacts=["cache/eval.npz"])
    _npz(wd.path("cache", "train.npz"), v=np.zeros(3))
    one = cache.content()["fingerprint"]
    _npz(wd.path("cache", "eval.npz"), v=np.ones(3))
    assert cache.content()["fingerprint"] == one
    _npz(wd.path("cache", "test.npz"), v=np.ones(3))
    assert cache.content()["fingerprint"] != one
    assert content_record(wd, [wd.path("nothing")]) is None


def test_a_corrupt_key_says_moving_the_stage_away_keeps_the_rest(tmp_path):
    wd, a, b, c = _keys(tmp_path / "wd")
    a.claim()
    b.claim()
    with open(b.path, "w") as f:
        f.write("{not json")
    with pytest.raises(StageMismatch) as err:
        _keys(tmp_path / "wd")[2].claim()
    text = str(err.value)
    assert "Move b.json and stages/b.json out of" in text
    assert "every other stage is kept" in text
    # doing what it says: the b stage is rebuilt, a is kept
    os.remove(b.path)
    wd, a, b, c = _keys(tmp_path / "wd")
    a.claim()
    b.claim()
    assert read_json(b.path)["fingerprint"] == b.fingerprint
