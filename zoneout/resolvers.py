"""OmegaConf resolvers the configs use; registered when zoneout.train (the Hydra entry point) is imported; the layers never need them.

The Slurm launcher (configs/hydra/launcher/slurm.yaml) sizes each job from the row's own settings:
`device=cpu` asks for no GPU (so CPU-only clusters schedule it) and less memory, and
`trainer.threads=N` asks for N CPUs."""
from __future__ import annotations

from omegaconf import OmegaConf


def slurm_gpus(device) -> int | None:
    """GPUs per node: none for device=cpu (no --gpus-per-node flag at all), else one."""
    return None if str(device) == "cpu" else 1


def slurm_mem_gb(device) -> int:
    """Memory per job: a CPU row's tensors live in host memory but are small (< 4 GB at paper
    scale); a GPU row also holds the CUDA context and pinned buffers."""
    return 8 if str(device) == "cpu" else 32


def slurm_cpus(threads) -> int:
    """CPUs per task: trainer.threads when set (the job uses no more), else 4 for data batching."""
    return int(threads) if threads else 4


def register() -> None:
    for name, function in (("zoneout.slurm_gpus", slurm_gpus), ("zoneout.slurm_mem_gb", slurm_mem_gb),
                           ("zoneout.slurm_cpus", slurm_cpus)):
        OmegaConf.register_new_resolver(name, function, replace=True)


register()
