"""The speaker classifier's cache in a run folder, which nothing but this user's own trainer can
make the trainer unpickle: a run folder is often shared, and pickle runs what a file names.

The file is MAGIC, an HMAC-SHA256 of the payload under a secret key of this user (created once,
readable by the user alone: `key_path`), then the payload, the classifier pickled at protocol 4.
A file that does not verify (planted, edited, damaged, written by another user) is never
unpickled: it is one notice and a refit. What verifies is still read with an unpickler that
builds only the types a classifier is made of (CACHE_GLOBALS), as a second wall.
"""

import hashlib
import hmac
import io
import os
import pickle
import secrets
import tempfile
from pathlib import Path

CACHE_NAME = "fidelity_attributor.pkl"
MAGIC = b"CHAMELEONS-FIDELITY-CACHE-1\n"
PROTOCOL = 4  # what CACHE_GLOBALS was recorded with (protocol 5 names other numpy globals)
# Every global a cached classifier may name: what `fidelity.fit_attributor`'s two kinds pickle to
# (recorded with the pinned scikit-learn) and numpy's scalars.
CACHE_GLOBALS = frozenset({
    ("chameleons.evaluate.fidelity", "Attributor"), ("chameleons.evaluate.fidelity", "line_and_context_ngrams"),
    ("chameleons.evaluate.fidelity_centroids", "CentroidClassifier"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy", "float64"), ("numpy", "float32"), ("numpy", "int64"),
    ("numpy", "int32"), ("numpy", "str_"), ("numpy", "bool_"),
    ("scipy.sparse._csr", "csr_matrix"),
    ("sklearn._loss._loss", "CyHalfBinomialLoss"),
    ("sklearn.feature_extraction.text", "TfidfTransformer"), ("sklearn.feature_extraction.text", "TfidfVectorizer"),
    ("sklearn.linear_model._stochastic_gradient", "SGDClassifier"), ("sklearn.pipeline", "Pipeline"),
})


def key_path() -> Path:
    """CHAMELEONS_FIDELITY_KEY, else ~/.cache/chameleons/fidelity_cache.key."""
    return Path(os.environ.get("CHAMELEONS_FIDELITY_KEY") or Path.home() / ".cache" / "chameleons" / "fidelity_cache.key")


def _key() -> bytes:
    path = key_path()
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another rank or process made it first
            return path.read_bytes()
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        return path.read_bytes()


def _sign(payload: bytes) -> bytes:
    return hmac.new(_key(), payload, hashlib.sha256).digest()


class _CacheUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in CACHE_GLOBALS:
            raise pickle.UnpicklingError(f"names {module}.{name}, which a fidelity classifier never holds")
        return super().find_class(module, name)


def load_cached(path: Path, key: str, kind) -> tuple:
    """(the cached classifier, an instance of `kind`, when this user's trainer wrote it for exactly
    these lines and settings (`key`), else None; why not, for a notice, '' when it is just stale)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    head, digest, payload = data[:len(MAGIC)], data[len(MAGIC):len(MAGIC) + 32], data[len(MAGIC) + 32:]
    if head != MAGIC:
        return None, "not a classifier cache this trainer wrote"
    if not hmac.compare_digest(digest, _sign(payload)):
        return None, f"not signed with this user's key ({key_path()}): written elsewhere or changed"
    try:
        cached = _CacheUnpickler(io.BytesIO(payload)).load()
    except Exception as exc:  # a damaged file is refitted, whatever is wrong with it
        return None, f"not a classifier this trainer wrote ({str(exc) or type(exc).__name__})"
    if not isinstance(cached, kind):
        return None, f"a {type(cached).__name__}, not a classifier"
    return (cached, "") if cached.key == key else (None, "")


def save_cache(folder, attributor, warn=None):
    """Written only once the run's output is (a run stopped by bad input leaves nothing), signed
    with this user's key; a folder that cannot be written is a notice."""
    try:
        payload = pickle.dumps(attributor, protocol=PROTOCOL)
        fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_NAME}.", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + _sign(payload) + payload)
        os.replace(tmp, Path(folder) / CACHE_NAME)
    except OSError as exc:
        if warn:
            warn(f"fidelity: classifier not cached in {folder} ({exc.strerror or exc})")
