"""CRD distillation under DDP: 2 gloo processes (torchrun) end with the student weights AND the CRD memories of
1 process with the same global batch. Run as a script (under torchrun) this file is the DDP worker.

BatchNorm statistics differ per rank by nature, so the networks here have none (test_engine's TinyNet).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from conftest import make_prepared  # noqa: E402
from crossmodal.engine import load_checkpoint  # noqa: E402
from crossmodal.sections import DataConfig, EngineConfig, ModelConfig, OptimConfig  # noqa: E402
from crossmodal.tasks.distill import DistillConfig, TeacherConfig, run_distill  # noqa: E402
from crossmodal.tasks.teach import TeachConfig, run_teach  # noqa: E402
from test_engine import register_tiny_models, tiny_models  # noqa: E402,F401  (autouse fixture)

torch.set_num_threads(1)


def distill_config(data: Path, teacher: Path, out_dir: Path) -> DistillConfig:
    return DistillConfig(
        name="student", seed=5, out_dir=str(out_dir), data=DataConfig(path=str(data)),
        student=ModelConfig(arch="test_tinynet", modality="L"),
        teachers=[TeacherConfig(checkpoint=str(teacher), modality="rgb")],
        losses={"ce": 1.0, "kd": 1.0, "crd": 0.8}, loss_params={"crd": {"nce_k": 8, "feat_dim": 8}},
        optim=OptimConfig(lr=0.1, batch_size=8, epochs=2, schedule="constant", weight_decay=5e-4),
        engine=EngineConfig(device="cpu", progress=False, log_every=1000))


def test_two_gloo_ranks_distill_like_one_process(tmp_path):
    data = make_prepared(tmp_path, splits={"train": 32, "test": 16})
    run_teach(TeachConfig(name="teacher", out_dir=str(tmp_path), data=DataConfig(path=str(data)),
                          model=ModelConfig(arch="test_tinynet"),
                          optim=OptimConfig(lr=0.1, batch_size=8, epochs=1, schedule="constant"),
                          engine=EngineConfig(device="cpu", progress=False)))
    teacher = tmp_path / "teacher" / "best.pt"
    run_distill(distill_config(data, teacher, tmp_path / "single"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(data), str(teacher), str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_checkpoint(tmp_path / "single" / "student" / "last.pt")
    b = load_checkpoint(tmp_path / "ddp" / "student" / "last.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], atol=1e-5), key
    memories = {k for k in a["task"] if "memory" in k}
    assert memories == {"losses.crd.0.memory_student.rows", "losses.crd.0.memory_teacher.rows"}
    for key in memories:  # two epochs visit every row: all are unit vectors now (the random init is not)
        torch.testing.assert_close(b["task"][key].norm(dim=1), torch.ones(len(b["task"][key])))
    for key in a["task"]:
        assert torch.allclose(a["task"][key].float(), b["task"][key].float(), atol=1e-5), key


def _worker(data: str, teacher: str, out_dir: str) -> None:
    register_tiny_models()
    run_distill(distill_config(Path(data), Path(teacher), Path(out_dir)))
    assert not torch.distributed.is_initialized(), "run_distill joined the job, so it must leave it"


if __name__ == "__main__":
    _worker(*sys.argv[1:4])
