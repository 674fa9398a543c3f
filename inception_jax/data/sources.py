"""TFDS datasets from a local data dir as random-access sources, with errors that say what to run.

Never touches the network: no GCS look-ups (`try_gcs=False`, `try_download_gcs=False`, community datasets off),
and only the datasets embedded in this package are ever generated, on first use, under a file lock so that several
processes sharing a data dir prepare it once. Everything else must already be prepared as array_record, the format
`tfds.data_source` (random access, hence grain and exact resume) needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import io
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from inception_jax.data import shapes_textures  # noqa: F401  (registers the builder with tfds by name)
from inception_jax.data.data_config import DataError
from inception_jax.validation import close_matches

log = logging.getLogger(__name__)
_SPLIT_RE = re.compile(r"^\s*([A-Za-z0-9_\-]+)")

# Datasets this package can generate on demand: the pipeline prepares them itself when a data dir lacks them.
EMBEDDED_DATASETS: frozenset[str] = frozenset({"shapes_textures"})


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a run needs to know about a dataset before reading it."""

    name: str
    data_dir: str
    num_classes: int
    class_names: tuple[str, ...] | None
    split_sizes: dict[str, int]  # prepared splits and their sizes (empty under tfds.testing.mock_data)
    image_shape: tuple[int | None, int | None, int]  # native (height, width, channels); None = varies
    file_format: str


def resolve_data_dir(data_dir: str | None) -> str:
    """None -> $TFDS_DATA_DIR or ~/tensorflow_datasets (the TFDS default)."""
    if data_dir:
        return os.path.expanduser(str(data_dir))
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def _base_name(name: str) -> str:
    return name.split("/")[0].split(":")[0]


@functools.cache
def _known_names() -> tuple[str, ...]:
    return tuple(tfds.list_builders(with_community_datasets=False))  # local registry only: no GCS index


def _unknown_dataset(name: str, data_dir: str, origin: str) -> DataError:
    close = close_matches(_base_name(name), _known_names(), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    return DataError(f"{origin}={name!r}: unknown dataset: not a registered TFDS builder and not prepared under "
                     f"{data_dir}.{hint} Embedded datasets (generated locally): {sorted(EMBEDDED_DATASETS)}; any "
                     f"TFDS image dataset prepared as array_record in the data dir also works "
                     f"(`python -c \"import tensorflow_datasets as tfds; print(tfds.list_builders())\"`).")


def _prepare_command(name: str, data_dir: str) -> str:
    base = _base_name(name)
    manual = ""
    if base in ("imagenet2012", "imagenet2012_subset", "imagenet2012_real"):
        manual = (f" imagenet2012 needs a manual download first: put ILSVRC2012_img_train.tar and "
                  f"ILSVRC2012_img_val.tar (from https://image-net.org, after registering) in "
                  f"{os.path.join(data_dir, 'downloads', 'manual')}/ (see "
                  f"https://www.tensorflow.org/datasets/catalog/imagenet2012), then run:")
    else:
        manual = " On a machine with network access run:"
    return (f"{manual} `tfds build {name} --data_dir={data_dir} --file_format=array_record` "
            f"(and copy {os.path.join(data_dir, base)} here if you built it elsewhere).")


def _convert_command(builder: Any) -> str:
    return (f"`tfds convert_format --dataset_version_dir={builder.data_path} --out_file_format=array_record` "
            f"(or rebuild with `tfds build {builder.name} --data_dir=... --file_format=array_record`)")


def _prepare_embedded(builder: Any, data_dir: str) -> None:
    """Generate an embedded dataset once per data dir; concurrent processes wait on the lock, then reuse it. A data
    dir that cannot be written (the default one under a read-only HOME, say) is a DataError naming the remedy."""
    try:
        _prepare_embedded_locked(builder, data_dir)
    except OSError as e:
        if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            raise
        raise DataError(f"cannot prepare the embedded dataset {builder.name}/{builder.builder_config.name} in "
                        f"{data_dir} ({e}): point data.data_dir (--config.data.data_dir=DIR) or $TFDS_DATA_DIR (used "
                        "when data.data_dir is unset) at a writable folder") from None


def _prepare_embedded_locked(builder: Any, data_dir: str) -> None:
    os.makedirs(data_dir, exist_ok=True)
    lock_path = os.path.join(data_dir, f".{builder.name}.prepare.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if builder.is_prepared():
                return
            log.warning("Preparing the embedded dataset %s/%s in %s (once per data dir).",
                        builder.name, builder.builder_config.name, data_dir)
            # TFDS prints its notes ("Downloading and preparing dataset Unknown size ...", for data generated here)
            # and progress bars to the console; they belong in the log.
            tfds.display_progress_bar(False)
            with contextlib.redirect_stdout(_PrintsToLog()):
                builder.download_and_prepare(
                    file_format="array_record",
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _PrintsToLog(io.StringIO):
    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                log.info("tfds: %s", re.sub(r"\x1b\[[0-9;]*m", "", line.strip()))  # without termcolor's colours
        return len(text)


def get_builder(name: str, data_dir: str | None, *, origin: str = "DataConfig.name") -> Any:
    """The TFDS builder of `name` in `data_dir`, prepared if it is embedded, with clear errors otherwise."""
    data_dir = resolve_data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise _unknown_dataset(name, data_dir, origin) from None
    except (ValueError, AssertionError) as e:  # e.g. an unknown config: 'shapes_textures/huge'
        raise DataError(f"{origin}={name!r}: {e}") from None
    if builder.name in EMBEDDED_DATASETS and not builder.is_prepared():
        _prepare_embedded(builder, data_dir)
    return builder


def _check_split(builder: Any, name: str, split: str, origin: str) -> None:
    splits = dict(builder.info.splits or {})
    if not splits:
        return  # nothing prepared to check against (tfds.testing.mock_data); the source itself will tell
    base = _SPLIT_RE.match(split)
    if base is None or base.group(1) not in splits:
        raise DataError(f"{origin}={split!r}: dataset {name!r} has no such split; splits prepared in "
                        f"{builder.data_dir}: {sorted(splits)}")


def open_split(name: str, data_dir: str | None, split: str, *, origin: str = "DataConfig.train_split") -> Sequence:
    """A random-access source (len, [i], __getitems__) of raw examples: images stay encoded bytes."""
    builder = get_builder(name, data_dir)
    data_dir = resolve_data_dir(data_dir)
    _check_split(builder, name, split, origin)
    try:
        return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except NotImplementedError:
        if not builder.is_prepared():
            raise DataError(f"dataset {name!r} is not prepared in {data_dir} (DataConfig.data_dir / "
                            f"$TFDS_DATA_DIR).{_prepare_command(name, data_dir)}") from None
        raise DataError(f"dataset {name!r} is prepared in {builder.data_dir} as {builder.info.file_format.value}, "
                        f"but the pipeline reads array_record (random access for grain and exact resume). "
                        f"Convert it with {_convert_command(builder)}.") from None
    except ValueError as e:  # a malformed split spec ('train[:abc]')
        raise DataError(f"{origin}={split!r}: {e}") from None


def dataset_info(name: str, data_dir: str | None) -> DatasetInfo:
    builder = get_builder(name, data_dir)
    data_dir = resolve_data_dir(data_dir)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(f"dataset {name!r} has features {sorted(features)}; the pipeline needs 'image' and 'label'")
    label = features["label"]
    num_classes = getattr(label, "num_classes", None)
    if not num_classes:
        raise DataError(f"dataset {name!r}: 'label' is {label!r}, not a ClassLabel with a number of classes")
    names = getattr(label, "names", None)
    shape = tuple(features["image"].shape)
    splits = {k: int(v.num_examples) for k, v in (builder.info.splits or {}).items()}
    if not splits and builder.is_prepared():
        raise DataError(f"dataset {name!r} in {builder.data_dir} records no splits")
    if not splits and not _is_mocked(builder):
        raise DataError(f"dataset {name!r} is not prepared in {data_dir} (DataConfig.data_dir / $TFDS_DATA_DIR)."
                        f"{_prepare_command(name, data_dir)}")
    return DatasetInfo(name=name, data_dir=data_dir, num_classes=int(num_classes),
                       class_names=tuple(names) if names else None, split_sizes=splits,
                       image_shape=(shape[0], shape[1], shape[2] if len(shape) > 2 else 1),
                       file_format=builder.info.file_format.value)


def _is_mocked(builder: Any) -> bool:
    """True inside `tfds.testing.mock_data`, which patches the data-source method with a function of its own."""
    method = getattr(type(builder), "as_data_source", None)
    return "mocking" in getattr(method, "__module__", "")
