#!/usr/bin/env bash
# Test-environment setup for medrelay.
#
# Idempotent and cheap when everything is already in place (each step checks
# first). Safe for CI (CI=true, no stdin) and for concurrent invocations (flock).
#
#   bash tests/support/setup.sh
#
# Provides:
#   - dcmtk (storescu/storescp/...), cmake, python3-venv   (Debian apt, only if missing)
#   - chromium, chromium-driver (chromedriver), fonts-wqy-microhei (Debian apt, only if missing;
#                                  WebRTC browser tests, tests/support/webdriver.rs)
#   - $REPO/.cache/venv            python venv with pynetdicom, pydicom, pydicom-data, numpy,
#                                  pillow, aiortc, websockets
#   - $REPO/.cache/dicom-samples   public sample corpus (see shared/dicom-samples/INDEX.md):
#         pydicom/data/test_files/*.dcm   and   data_store/data/*.dcm
#   - $REPO/.cache/ct300           300-slice synthetic CT series (fixtures/gen_ct.py)
#   - .gitignore entries for generated/secret files
#
# Environment knobs: PYTHON (interpreter used to create the venv, default python3).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE="$REPO/.cache"
VENV="$CACHE/venv"
VPY="$VENV/bin/python"
SAMPLES="$CACHE/dicom-samples"
CT300="$CACHE/ct300"
CT_N=300

log() { echo "setup.sh: $*" >&2; }
die() { echo "setup.sh: ERROR: $*" >&2; exit 1; }

mkdir -p "$CACHE"
# Serialise concurrent runs (e.g. several test binaries calling setup at once).
exec 9>"$CACHE/.setup.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

# ---------------------------------------------------------------- .gitignore
GITIGNORE="$REPO/.gitignore"
touch "$GITIGNORE"
# make sure the file ends with a newline before appending
if [ -s "$GITIGNORE" ] && [ -n "$(tail -c1 "$GITIGNORE")" ]; then echo >>"$GITIGNORE"; fi
for line in '.cache/' 'target/' 'data/' 'certs/*.key' 'certs/*.crt'; do
    grep -qxF -- "$line" "$GITIGNORE" || echo "$line" >>"$GITIGNORE"
done

# ---------------------------------------------------------------- apt
PY="${PYTHON:-python3}"
APT_UPDATED=""
apt_update_once() { [ -n "$APT_UPDATED" ] || { apt-get update -qq; APT_UPDATED=1; }; }
venv_ok() { "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; }
if ! command -v storescu >/dev/null 2>&1 || ! command -v cmake >/dev/null 2>&1 || ! venv_ok; then
    [ "$(id -u)" = 0 ] || die "need root to apt-get install dcmtk cmake python3-venv"
    log "installing dcmtk cmake python3-venv (apt)"
    apt_update_once
    apt-get install -y -qq --no-install-recommends dcmtk cmake python3-venv </dev/null >/dev/null
fi
command -v storescu >/dev/null 2>&1 || die "storescu still missing after apt-get install dcmtk"
command -v cmake >/dev/null 2>&1 || die "cmake still missing after apt-get install cmake"
if ! venv_ok; then
    # e.g. a pyenv/other python without ensurepip: fall back to Debian's python
    [ -x /usr/bin/python3 ] && PY=/usr/bin/python3
    venv_ok || die "no python with a working venv module ($PY)"
fi
# Headless browser for the WebRTC consultation tests (Debian's chromium ships its
# chromedriver in chromium-driver: /usr/bin/chromedriver -> /usr/lib/chromium/chromedriver).
chromedriver_path() {
    command -v chromedriver 2>/dev/null && return 0
    [ -x /usr/lib/chromium/chromedriver ] && echo /usr/lib/chromium/chromedriver
}
if ! command -v chromium >/dev/null 2>&1 || [ -z "$(chromedriver_path)" ]; then
    [ "$(id -u)" = 0 ] || die "need root to apt-get install chromium chromium-driver"
    log "installing chromium chromium-driver (apt)"
    apt_update_once
    apt-get install -y -qq --no-install-recommends chromium chromium-driver </dev/null >/dev/null
fi
command -v chromium >/dev/null 2>&1 || die "chromium still missing after apt-get install chromium"
CHROMEDRIVER="$(chromedriver_path)" || die "chromedriver still missing after apt-get install chromium-driver"
# A CJK font, so Chinese report text in the reading pages' screenshots shows
# as text rather than empty boxes (as it does on the clinics' machines).
if ! dpkg -s fonts-wqy-microhei >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        log "installing fonts-wqy-microhei (apt)"
        apt_update_once
        apt-get install -y -qq --no-install-recommends fonts-wqy-microhei </dev/null >/dev/null || log "CJK font not installed; screenshots will show boxes for Chinese text"
    fi
fi

# ---------------------------------------------------------------- venv
PYVERS=""
venv_has_pkgs() {
    [ -x "$VPY" ] && PYVERS=$("$VPY" -c '
import importlib.util as u, sys
import numpy, pydicom, pynetdicom, PIL
if u.find_spec("data_store") is None and u.find_spec("pydicom_data") is None:
    sys.exit(1)
print(f"pydicom {pydicom.__version__}, pynetdicom {pynetdicom.__version__}, numpy {numpy.__version__}")
' 2>/dev/null)
}
if ! venv_has_pkgs; then
    if [ ! -x "$VPY" ] || ! "$VPY" -m pip --version >/dev/null 2>&1; then
        log "creating venv $VENV (with $PY)"
        rm -rf "$VENV"
        "$PY" -m venv "$VENV"
    fi
    log "pip install pynetdicom pydicom pydicom-data numpy pillow into $VENV"
    "$VPY" -m pip install -q 'pynetdicom>=3,<4' 'pydicom>=3,<4' pydicom-data numpy pillow </dev/null
    venv_has_pkgs || die "venv packages not importable after pip install"
fi
# WebRTC peer / signalling helpers (python side of the consultation tests).
WEBRTC_VERS=""
venv_has_webrtc() {
    [ -x "$VPY" ] && WEBRTC_VERS=$("$VPY" -c '
from importlib.metadata import version
import aiortc, websockets
print("aiortc", version("aiortc") + ", websockets", version("websockets"))
' 2>/dev/null)
}
if ! venv_has_webrtc; then
    log "pip install aiortc websockets into $VENV"
    "$VPY" -m pip install -q 'aiortc>=1.9,<2' 'websockets>=13' </dev/null
    venv_has_webrtc || die "aiortc/websockets not importable after pip install"
fi

# ---------------------------------------------------------------- sample corpus
SAMPLE_CHECK=("$SAMPLES/data_store/data/MR2_UNCR.dcm" "$SAMPLES/pydicom/data/test_files/CT_small.dcm")
samples_ok() { local f; for f in "${SAMPLE_CHECK[@]}"; do [ -s "$f" ] || return 1; done; }
if ! samples_ok; then
    log "installing sample corpus into $SAMPLES (pip --target pydicom pydicom-data)"
    "$VPY" -m pip install -q --upgrade --no-deps --target "$SAMPLES" pydicom pydicom-data </dev/null
    if ! samples_ok; then
        for f in "${SAMPLE_CHECK[@]}"; do [ -s "$f" ] || echo "setup.sh: missing $f" >&2; done
        die "sample corpus incomplete after pip install (pydicom-data did not ship its files?)"
    fi
fi

# ---------------------------------------------------------------- CT fixture
count_ct() { find "$CT300" -maxdepth 1 -name 'CT*.dcm' -type f 2>/dev/null | wc -l; }
if [ "$(count_ct)" -ne "$CT_N" ]; then
    log "generating $CT_N-slice CT series into $CT300"
    rm -rf "$CT300.tmp"
    "$VPY" "$REPO/fixtures/gen_ct.py" --n "$CT_N" --out "$CT300.tmp" --seed 1 >/dev/null
    rm -rf "$CT300"
    mv "$CT300.tmp" "$CT300"
    [ "$(count_ct)" -eq "$CT_N" ] || die "CT fixture generation produced $(count_ct) files, want $CT_N"
fi

# ---------------------------------------------------------------- summary
n_samples=$(find "$SAMPLES/pydicom/data/test_files" "$SAMPLES/data_store/data" -name '*.dcm' -type f | wc -l)
dcmtk_ver=$(storescu --version 2>/dev/null | grep -oE 'v[0-9]+\.[0-9]+\.[0-9]+' | head -1 || true)
chromium_ver=$(chromium --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+){3}' | head -1 || true)
chromedriver_ver=$("$CHROMEDRIVER" --version 2>/dev/null | grep -oE '[0-9]+(\.[0-9]+){3}' | head -1 || true)
echo "medrelay test env ready: dcmtk ${dcmtk_ver:-?} ($(command -v storescu)), $(cmake --version | head -1), chromium ${chromium_ver:-?}, chromedriver ${chromedriver_ver:-?} ($CHROMEDRIVER), venv .cache/venv ($PYVERS; $WEBRTC_VERS), samples .cache/dicom-samples ($n_samples .dcm), ct300 .cache/ct300 ($(count_ct) files)"
