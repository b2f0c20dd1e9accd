"""Where and how big each task's pod is on a cluster, and the credentials it gets: the
`kubeflow` section of the config applied to the compiled pipeline's tasks (kfp-kubernetes)."""

from kfp import dsl, kubernetes

from components import IMAGE
from reid_core.config import (
    ACCELERATED_STAGES,
    DATA_PARALLEL_STAGES,
    STATE_MOUNT,
    TRAINING_STAGES,
    KubeflowConfig,
    TaskResources,
)


def gpu_image(settings: KubeflowConfig) -> str:
    """The accelerated tasks' image: the configured one, or the CPU image's `-cuda` variant."""
    return settings.accelerator.image or f"{IMAGE}-cuda"


def training_image(settings: KubeflowConfig) -> str:
    """The image that trains: the GPU one when the pipeline is compiled for accelerators."""
    return gpu_image(settings) if settings.accelerator.type else IMAGE


def launches_job(stage: str, settings: KubeflowConfig) -> bool:
    """Whether the `stage` task creates a training-operator job instead of training itself."""
    return stage in DATA_PARALLEL_STAGES and settings.training_job.nodes > 0


def stage_overrides(stage: str, settings: KubeflowConfig) -> list[str]:
    """Config overrides a `stage` task needs on the cluster: its training state on the volume
    (kfp_glue keys it further by pipeline run), one training process per GPU of its pod."""
    overrides = []
    if settings.state_volume and stage in TRAINING_STAGES:
        overrides.append(f"runtime.state_dir={STATE_MOUNT}")
    if stage in DATA_PARALLEL_STAGES and settings.gpus_per_task > 1:
        overrides.append(f"runtime.procs_per_node={settings.gpus_per_task}")
    return overrides


def place(task: dsl.PipelineTask, stage: str, settings: KubeflowConfig) -> dsl.PipelineTask:
    """Give `task` (of `stage`) its resources, accelerator, image, node placement, retries,
    state volume and the credentials Secret as `settings` say. A task that launches a
    training-operator job is small and stays on CPU: the job's pods get the train stage's size."""
    launcher = launches_job(stage, settings)
    resources = TaskResources() if launcher else settings.resources[stage]
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    accelerator = settings.accelerator
    if accelerator.type and stage in ACCELERATED_STAGES and not launcher:
        task.set_accelerator_type(accelerator.type).set_accelerator_limit(accelerator.count)
        task.container_spec.image = gpu_image(settings)
        for key, value in sorted(accelerator.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in accelerator.tolerations:
            kubernetes.add_toleration(
                task,
                key=toleration.key or None,
                operator=toleration.operator,
                value=toleration.value or None,
                effect=toleration.effect or None,
            )
    if stage in TRAINING_STAGES:
        if settings.retries:
            task.set_retry(
                num_retries=settings.retries,
                backoff_duration=f"{settings.retry_backoff_s}s",
                backoff_factor=2.0,
            )
        if settings.state_volume:
            kubernetes.mount_pvc(task, pvc_name=settings.state_volume, mount_path=STATE_MOUNT)
    if settings.credentials_secret:
        # optional: a Secret holding only some of the keys (a token, not a password) is fine
        kubernetes.use_secret_as_env(
            task,
            secret_name=settings.credentials_secret,
            secret_key_to_env={key: key for key in settings.credentials_keys},
            optional=True,
        )
    return task
