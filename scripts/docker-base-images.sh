#!/usr/bin/env bash
# Makes the base images docker/Dockerfile and docker/compose.yaml name available:
# debian:bookworm-slim, rust:1.95-bookworm, postgres:15.
#
# For each one: present locally (`docker image inspect`) -> nothing to do; else pulled from the
# registry when one answers; else (no registry reachable, e.g. an air-gapped CI machine) a local
# stand-in with the same name is built from Debian packages:
#   debian:bookworm-slim  debootstrap --variant=minbase bookworm (mirror read from this
#                         machine's apt sources), slimmed like the official image, imported
#   rust:1.95-bookworm    that rootfs + gcc libc6-dev ca-certificates pkg-config + the local
#                         1.95 toolchain in /usr/local/rust + the host's CA bundle
#   postgres:15           docker/base/postgres/Dockerfile on the debian stand-in
# The rootfs tarballs are cached in $AGP_DOCKER_CACHE (default ~/.cache/agp/docker), so a
# second run only imports them. Needs root (debootstrap, chroot) for the stand-ins.
#
# Env: AGP_DOCKER_CACHE, AGP_DEBIAN_MIRROR (overrides the mirror read from apt's sources),
#      AGP_PULL_TIMEOUT (seconds for the registry probe, default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${AGP_DOCKER_CACHE:-$HOME/.cache/agp/docker}"
# Bump when the recipe changes: old tarballs are then ignored.
RECIPE=2
DEBIAN_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1.95-bookworm
RUST_VERSION=1.95
PG_IMAGE=postgres:15

log() { echo "[base-images] $*"; }
die() { echo "[base-images] error: $*" >&2; exit 1; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# --- which images are missing, and can a registry supply them? ------------------------------
missing=()
for img in "$DEBIAN_IMAGE" "$RUST_IMAGE" "$PG_IMAGE"; do
  if have_image "$img"; then log "$img: present"; else missing+=("$img"); fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

registry=unknown
for img in "${missing[@]}"; do
  if [ "$registry" = no ]; then break; fi
  log "$img: missing; trying the registry (docker pull, ${AGP_PULL_TIMEOUT:-60} s at most)"
  if timeout "${AGP_PULL_TIMEOUT:-60}" docker pull -q "$img" >/dev/null 2>/tmp/agp-pull.err; then
    registry=yes
    log "$img: pulled from the registry"
  else
    log "$img: pull failed: $(tail -n1 /tmp/agp-pull.err 2>/dev/null || echo timeout)"
    registry=no
  fi
done
missing=()
for img in "$DEBIAN_IMAGE" "$RUST_IMAGE" "$PG_IMAGE"; do
  have_image "$img" || missing+=("$img")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "no registry reachable: building base images from Debian packages (${missing[*]})"
[ "$(id -u)" -eq 0 ] || die "building the stand-ins needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
mkdir -p "$CACHE"

# --- the Debian mirror this machine already uses --------------------------------------------
# The first URI serving bookworm's main component, from deb822 .sources files or one-line
# .list files; the security URI too, when there is one.
read_mirrors() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush() { if (uris != "" && suites ~ /bookworm/ && comps ~ /main/ && enabled != "no") print suites "\t" uris; uris = suites = comps = ""; enabled = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      tolower($1) == "uris:" { $1 = ""; uris = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      tolower($1) == "components:" { $1 = ""; comps = $0 }
      tolower($1) == "enabled:" { enabled = tolower($2) }
      END { flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb [options] URI SUITE COMPONENTS...
    sed -E 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 ~ /bookworm/ && / main/ { print $3 "\t" $2 }'
  done
}
mirrors="$(read_mirrors)"
MIRROR="${AGP_DEBIAN_MIRROR:-$(printf '%s\n' "$mirrors" | awk -F'\t' '$1 !~ /security/ { split($2, u, " "); for (i in u) if (u[i] ~ /^https?:/) { print u[i]; exit } }')}"
SECURITY="$(printf '%s\n' "$mirrors" | awk -F'\t' '$1 ~ /security/ { split($2, u, " "); for (i in u) if (u[i] ~ /^https?:/) { print u[i]; exit } }')"
MIRROR="${MIRROR%/}"
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
log "Debian mirror: $MIRROR${SECURITY:+ (security: $SECURITY)}"

# Work dirs under the cache (same filesystem as the tarballs; removed on exit).
WORK="$(mktemp -d "$CACHE/work.XXXXXX")"
cleanup() {
  local d
  for d in "$WORK"/*/; do
    [ -d "$d" ] || continue
    umount "$d/proc" 2>/dev/null || true
  done
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# Runs apt-get in a chroot with the host's resolver (host networking, like `docker --network host`).
in_chroot() {
  local root="$1"
  shift
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
  mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    DEBCONF_NOWARNINGS=yes HOME=/root LANG=C.UTF-8 "$@"
  umount "$root/proc"
}

import_tar() { # TAR IMAGE CHANGES...
  local tar="$1" image="$2"
  shift 2
  local changes=()
  local c
  for c in "$@"; do changes+=(--change "$c"); done
  docker import "${changes[@]}" --message "local stand-in built by scripts/docker-base-images.sh" \
    "$tar" "$image" >/dev/null
  log "$image: imported ($(docker image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

DEBIAN_TAR="$CACHE/debian-bookworm-slim.r$RECIPE.tar"
RUST_TAR="$CACHE/rust-$RUST_VERSION-bookworm.r$RECIPE.tar"
# Tarballs of older recipes are of no use any more.
find "$CACHE" -maxdepth 1 -name '*.r*.tar' ! -name "*.r$RECIPE.*tar" -delete
DEBIAN_CHANGES=('ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'CMD ["bash"]')

# --- debian:bookworm-slim --------------------------------------------------------------------
build_debian_tar() {
  local root="$WORK/debian"
  local t0=$SECONDS
  log "debootstrap --variant=minbase bookworm from $MIRROR (about 2 minutes)"
  debootstrap --variant=minbase --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    bookworm "$root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  {
    echo "deb $MIRROR bookworm main"
    echo "deb $MIRROR bookworm-updates main"
    [ -n "$SECURITY" ] && echo "deb ${SECURITY%/} bookworm-security main"
  } >"$root/etc/apt/sources.list"
  # What the official slim image leaves out of every later package: docs, man pages, locales.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
  # No services start inside image builds.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
  # No pseudo-terminal for dpkg's log in a chroot without /dev/pts.
  echo 'Dpkg::Use-Pty "0";' >"$root/etc/apt/apt.conf.d/docker-no-pty"
  in_chroot "$root" sh -c 'apt-get update -qq && apt-get upgrade -y -qq >/dev/null 2>&1 && apt-get clean'
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/var/cache/debconf/*-old "$root"/tmp/* "$root"/etc/machine-id
  : >"$root/etc/resolv.conf"
  tar --numeric-owner -C "$root" -cf "$DEBIAN_TAR.part" . && mv "$DEBIAN_TAR.part" "$DEBIAN_TAR"
  log "debian rootfs cached: $DEBIAN_TAR ($((SECONDS - t0)) s)"
}

# The local toolchain: rustup's 1.95 toolchain, else the active one if it is 1.95.
find_toolchain() {
  local d
  for d in "${RUSTUP_HOME:-$HOME/.rustup}"/toolchains/"$RUST_VERSION"*-x86_64-unknown-linux-gnu; do
    [ -x "$d/bin/cargo" ] && { readlink -f "$d"; return; }
  done
  if command -v rustc >/dev/null && rustc --version | grep -q "^rustc $RUST_VERSION\."; then
    d="$(rustc --print sysroot)"
    [ -x "$d/bin/cargo" ] && { readlink -f "$d"; return; }
  fi
  return 1
}

# --- rust:1.95-bookworm ----------------------------------------------------------------------
build_rust_tar() {
  local root="$WORK/rust" tc
  local t0=$SECONDS
  tc="$(find_toolchain)" || die "no Rust $RUST_VERSION toolchain found (rustup toolchain install $RUST_VERSION)"
  log "rust rootfs: debian rootfs + gcc libc6-dev ca-certificates pkg-config + toolchain $tc"
  mkdir -p "$root"
  tar -C "$root" -xf "$DEBIAN_TAR"
  in_chroot "$root" sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates pkg-config >/dev/null 2>&1 && apt-get clean && rm -rf /var/lib/apt/lists/*'
  # The host's bundle: registries may be reached through a proxy only it trusts.
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/host-bundle.crt"
  fi
  mkdir -p "$root/usr/local/rust" "$root/usr/local/cargo"
  tar -C "$tc" --exclude=./share/doc -cf - . | tar -C "$root/usr/local/rust" -xf -
  chmod 1777 "$root/usr/local/cargo"
  "$root/usr/local/rust/bin/rustc" --version >/dev/null 2>&1 || true
  : >"$root/etc/resolv.conf"
  tar --numeric-owner -C "$root" -cf "$RUST_TAR.part" . && mv "$RUST_TAR.part" "$RUST_TAR"
  rm -rf --one-file-system "$root"
  log "rust rootfs cached: $RUST_TAR ($((SECONDS - t0)) s)"
}

need_debian_tar=0
for img in "${missing[@]}"; do
  case "$img" in
    "$DEBIAN_IMAGE" | "$PG_IMAGE") need_debian_tar=1 ;;
    "$RUST_IMAGE") [ -s "$RUST_TAR" ] || need_debian_tar=1 ;;
  esac
done
if [ "$need_debian_tar" = 1 ] && [ ! -s "$DEBIAN_TAR" ]; then
  build_debian_tar
elif [ "$need_debian_tar" = 1 ]; then
  log "debian rootfs: cached ($DEBIAN_TAR)"
fi

if ! have_image "$DEBIAN_IMAGE"; then
  import_tar "$DEBIAN_TAR" "$DEBIAN_IMAGE" "${DEBIAN_CHANGES[@]}"
fi

if ! have_image "$RUST_IMAGE"; then
  if [ -s "$RUST_TAR" ]; then log "rust rootfs: cached ($RUST_TAR)"; else build_rust_tar; fi
  import_tar "$RUST_TAR" "$RUST_IMAGE" \
    'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    'ENV CARGO_HOME=/usr/local/cargo' \
    "ENV RUST_VERSION=$RUST_VERSION" \
    'CMD ["bash"]'
fi

if ! have_image "$PG_IMAGE"; then
  t0=$SECONDS
  # Cached as a saved image, keyed by the recipe's files (and on the debian stand-in's rootfs).
  pg_key="$(cat docker/base/postgres/* "$DEBIAN_TAR" 2>/dev/null | sha256sum | cut -c1-16)"
  PG_TAR="$CACHE/postgres-15.r$RECIPE.$pg_key.tar"
  if [ -s "$PG_TAR" ]; then
    docker load -q -i "$PG_TAR" >/dev/null
    log "$PG_IMAGE: loaded from $PG_TAR ($((SECONDS - t0)) s)"
  else
    log "$PG_IMAGE: docker build docker/base/postgres (Debian's postgresql-15)"
    DOCKER_BUILDKIT=0 docker build -q --network host -t "$PG_IMAGE" docker/base/postgres >/dev/null
    rm -f "$CACHE"/postgres-15.*.tar
    docker save -o "$PG_TAR.part" "$PG_IMAGE" && mv "$PG_TAR.part" "$PG_TAR"
    log "$PG_IMAGE: built and cached ($((SECONDS - t0)) s)"
  fi
fi

for img in "$DEBIAN_IMAGE" "$RUST_IMAGE" "$PG_IMAGE"; do
  have_image "$img" || die "$img is still missing"
done
log "base images ready"
