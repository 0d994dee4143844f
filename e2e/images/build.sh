#!/usr/bin/env bash
# Builds Rookery's container images without any registry: nothing is pulled.
#
# Usage: e2e/images/build.sh [options] [IMAGE...]
#
#   IMAGE is any of base redis postgres haproxy broker operator (default: all of them but
#   operator, in that order; operator too when ROOKERY_OPERATOR_BIN is set):
#     rookery-base:bookworm   Debian bookworm minbase made with debootstrap, `docker import`ed
#     rookery-redis:dev       e2e/images/redis/Dockerfile
#     rookery-postgres:dev    e2e/images/postgres/Dockerfile (+ entrypoint.sh)
#     rookery-haproxy:dev     e2e/images/haproxy/Dockerfile
#     rookery-broker:dev      broker/Dockerfile: FROM scratch, the broker binary and the shared
#                             libraries `ldd` lists for it
#     rookery-operator:dev    operator/Dockerfile: the same for the operator binary
#
#   --rebuild     rebuild the images even when they are up to date (the cached debootstrap
#                 root file systems under target/images/ are reused)
#   --refresh     like --rebuild, and run debootstrap again instead of using the cache
#   --offline     do not try the network in `docker build`: make the redis, postgres and
#                 haproxy images with `debootstrap --include` on the host (the fallback)
#   -h, --help    this text
#
# Environment:
#   ROOKERY_BROKER_BIN     the broker binary (default target/release/rookery-broker)
#   ROOKERY_OPERATOR_BIN   the operator binary (default target/release/rookery-operator)
#   ROOKERY_DEBIAN_MIRROR  the Debian mirror (default: the one apt uses for bookworm, read
#                          from /etc/apt/sources.list and /etc/apt/sources.list.d/)
#
# Needs root (debootstrap, chroot), docker, debootstrap and ldd. It is idempotent: an image
# is rebuilt only when its inputs changed (each image carries the hash of its inputs in the
# label rookery.inputs), and debootstrap runs only when its cached tarball is missing, so a
# second run takes seconds.
#
# The redis, postgres and haproxy images are made with `docker build` (apt-get in a RUN)
# when build containers can reach the Debian mirror; build.sh checks that first. When they
# cannot, each image's root file system is made with `debootstrap --include=<packages>` on
# the host and `docker import`ed; the Dockerfile's other instructions are applied by hand
# (see the header of those Dockerfiles).
set -euo pipefail

SUITE=bookworm
BASE_IMAGE=rookery-base:$SUITE
SERVICES=(redis postgres haproxy)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=$repo/target/images

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
log() { printf '[build.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

rebuild=0 refresh=0 offline=0
wanted=()
while (($#)); do
    case $1 in
        --rebuild) rebuild=1 ;;
        --refresh) rebuild=1 refresh=1 ;;
        --offline) offline=1 ;;
        -h | --help) usage; exit 0 ;;
        base | redis | postgres | haproxy | broker | operator) wanted+=("$1") ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
if ((${#wanted[@]} == 0)); then
    wanted=(base "${SERVICES[@]}" broker)
    [[ -z ${ROOKERY_OPERATOR_BIN:-} ]] || wanted+=(operator)
fi

want() { local w; for w in "${wanted[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot talk to the docker daemon"
# Without the buildx plugin, `docker build` must be told to use the classic builder.
if ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi

mkdir -p "$cache"
# Scratch directories live under target/images/ (the same file system as the cache) and
# go away on exit, mounts first (debootstrap mounts /proc and /sys in its target).
scratch=()
cleanup() {
    local d m
    for d in "${scratch[@]}"; do
        [[ -e $d ]] || continue
        awk -v d="$d" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$d"
    done
}
trap cleanup EXIT
# Sets SCRATCH (no command substitution: a subshell's list would not be cleaned up).
new_scratch() {
    SCRATCH=$(mktemp -d "$cache/tmp.XXXXXX")
    scratch+=("$SCRATCH")
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
image_label() {
    docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
# The images a rebuild replaced, removed at the end (children before parents).
replaced=()
remember_old() { local id; id=$(image_id "$1"); [[ -z $id ]] || replaced=("$id" "${replaced[@]}"); }
remove_replaced() {
    local id
    for id in "${replaced[@]}"; do
        # Still tagged (unchanged) or used by a container: it stays.
        [[ $(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null) == 0 ]] || continue
        docker rmi "$id" >/dev/null 2>&1 || true
    done
}
sha() { sha256sum | cut -c1-64; }

# --- the Debian mirror: the one apt already uses (one-line and deb822 formats) ------------
# Prints the first URI whose suite is exactly $1.
mirror_for_suite() {
    local suite=$1 f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk -v suite="$suite" '
            $1 == "deb" {
                i = 2
                if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v suite="$suite" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    key = tolower(line); sub(/:.*/, "", key)
                    val = line; sub(/^[^:]*:[ \t]*/, "", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                if (enabled != "no" && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ")) {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "$f"
    done
}
MIRROR=${ROOKERY_DEBIAN_MIRROR:-}
security_mirror=
find_mirrors() {
    [[ -n $MIRROR ]] || MIRROR=$(mirror_for_suite "$SUITE" | sed -n 1p)
    [[ -n $MIRROR ]] || die "no Debian mirror for $SUITE in apt's sources; set ROOKERY_DEBIAN_MIRROR"
    MIRROR=${MIRROR%/}
    security_mirror=$(mirror_for_suite "$SUITE-security" | sed -n 1p)
    security_mirror=${security_mirror%/}
}

# --- root file systems ---------------------------------------------------------------------
# What every image gets after debootstrap: apt sources with updates and security, no
# recommends, no docs, man pages or message translations, no services started by package
# scripts, no caches.
tweak_rootfs() {
    local root=$1
    {
        echo "deb $MIRROR $SUITE main"
        echo "deb $MIRROR $SUITE-updates main"
        [[ -z $security_mirror ]] || echo "deb $security_mirror $SUITE-security main"
    } >"$root/etc/apt/sources.list"
    cat >"$root/etc/apt/apt.conf.d/90rookery" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
EOF
    cat >"$root/etc/dpkg/dpkg.cfg.d/90rookery-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    printf '#!/bin/sh\n# No service starts while images are built.\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    rm -rf "$root"/usr/share/{man,info,groff,lintian,linda}/* \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/tmp/* "$root"/var/tmp/*
    find "$root/var/log" -type f -delete
    : >"$root/etc/resolv.conf"
    echo localhost >"$root/etc/hostname"
}

# debootstrap ROOT [PACKAGES]: a minbase system in ROOT, with PACKAGES (comma-separated).
run_debootstrap() {
    local root=$1 include=${2:-} args=(--variant=minbase)
    [[ -z $include ]] || args+=("--include=$include")
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    ((EUID == 0)) || die "debootstrap needs root"
    log "debootstrap ${args[*]} $SUITE (mirror from apt's sources)"
    if ! debootstrap "${args[@]}" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1; then
        tail -n 30 "$root.log" >&2
        die "debootstrap failed (log above)"
    fi
    rm -f "$root.log"
}

# rootfs_tarball NAME PACKAGES: sets TARBALL to the cached tarball of a debootstrapped
# system, made when missing (or with --refresh).
rootfs_tarball() {
    local name=$1 include=${2:-} tarball root
    tarball=$cache/rootfs-$name-$SUITE.tar
    if ((refresh)) || ! [[ -s $tarball ]]; then
        new_scratch
        root=$SCRATCH/root
        mkdir "$root"
        run_debootstrap "$root" "$include"
        tweak_rootfs "$root"
        tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
            -C "$root" -cf "$tarball.partial" .
        mv "$tarball.partial" "$tarball"
        log "cached $(du -h "$tarball" | cut -f1) root file system in ${tarball#"$repo"/}"
    else
        log "using the cached ${tarball#"$repo"/}"
    fi
    TARBALL=$tarball
}

# --- rookery-base:bookworm ------------------------------------------------------------------
# The environment of the base image, and of the images the fallback imports instead of
# building them FROM it.
BASE_CHANGES=(
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change 'ENV LANG=C.UTF-8'
)
build_base() {
    local t0=$SECONDS tarball
    if image_exists "$BASE_IMAGE" && ((!rebuild)); then
        log "$BASE_IMAGE exists (--rebuild makes it again)"
        return
    fi
    find_mirrors
    rootfs_tarball base
    tarball=$TARBALL
    remember_old "$BASE_IMAGE"
    local inputs
    inputs=$(sha <"$tarball")
    docker import "${BASE_CHANGES[@]}" --change 'CMD ["/bin/bash"]' \
        --change "LABEL rookery.inputs=$inputs" \
        --message "debootstrap --variant=minbase $SUITE" \
        - "$BASE_IMAGE" <"$tarball" >/dev/null
    log "built $BASE_IMAGE in $((SECONDS - t0)) s"
}

# --- redis, postgres, haproxy ---------------------------------------------------------------
# Whether containers of `docker build` reach the mirror (decided once, on first need).
build_network=
probe_build_network() {
    [[ -z $build_network ]] || return 0
    if ((offline)); then
        build_network=no
        return 0
    fi
    local dir
    new_scratch
    dir=$SCRATCH
    cat >"$dir/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN timeout 90 apt-get -o Acquire::Retries=0 -o Acquire::http::Timeout=15 update >/tmp/out 2>&1; \\
    s=\$?; cat /tmp/out; [ \$s -eq 0 ] && ! grep -qE '^(Err:|E:|W:)' /tmp/out
EOF
    log "checking whether docker build containers reach the Debian mirror"
    local id
    if id=$(docker_build --no-cache --force-rm -q "${proxy_args[@]}" "$dir" 2>"$dir/err"); then
        build_network=yes
        docker rmi "$id" >/dev/null 2>&1 || true
        log "they do: the images are made with docker build"
    else
        build_network=no
        log "they do not (last lines below): the images are made with debootstrap --include"
        tail -n 5 "$dir/err" >&2 || true
    fi
}

# docker build without the classic builder's deprecation notice.
docker_build() {
    docker build "$@" 2> >(sed '/^DEPRECATED: The legacy builder/,/^$/d' >&2)
}

# The host's proxy settings, for apt-get in docker build.
proxy_args=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [[ -z ${!v:-} ]] || proxy_args+=(--build-arg "$v=${!v}")
done

# The Dockerfile of an image, continuation lines joined and comments dropped.
dockerfile_lines() {
    sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' "$1" |
        sed -e ':a' -e '/\\$/{N;s/\\\n[[:space:]]*/ /;ba' -e '}'
}

# The fallback: debootstrap --include=<ARG PACKAGES>, then the Dockerfile's steps by hand.
import_service() {
    local name=$1 tag=$2 inputs=$3 ctx=$here/$1 packages tarball root line instr rest
    local changes=() later=()
    packages=$(dockerfile_lines "$ctx/Dockerfile" | sed -n 's/^ARG PACKAGES="\(.*\)"$/\1/p')
    [[ -n $packages ]] || die "$ctx/Dockerfile has no ARG PACKAGES=\"...\" line"
    find_mirrors
    rootfs_tarball "$name" "${packages// /,}"
    tarball=$TARBALL
    new_scratch
    root=$SCRATCH/root
    mkdir "$root"
    tar -C "$root" --numeric-owner -xf "$tarball"
    while IFS= read -r line; do
        instr=${line%% *}
        rest=${line#* }
        case ${instr^^} in
            FROM | ARG) ;;
            RUN)
                # apt-get ran as debootstrap --include; the rest runs in the new system.
                [[ $rest == *apt-get* ]] && continue
                chroot "$root" /bin/sh -c "$rest" || die "$name: RUN failed in the chroot: $rest"
                ;;
            COPY)
                # shellcheck disable=SC2086 # plain "COPY src dst" only
                set -- $rest
                (($# == 2)) && [[ $1 != --* ]] || die "$name: only plain COPY src dst is handled: $line"
                mkdir -p "$root$(dirname "$2")"
                cp -a "$ctx/$1" "$root$2"
                chown 0:0 "$root$2"
                ;;
            CMD | ENTRYPOINT | ENV | EXPOSE | USER | WORKDIR | LABEL | VOLUME)
                changes+=(--change "$line")
                ;;
            STOPSIGNAL | HEALTHCHECK)
                # `docker import --change` refuses these: a FROM-only build adds them.
                later+=("$line")
                ;;
            *) die "$name: the debootstrap fallback does not handle $instr" ;;
        esac
    done < <(dockerfile_lines "$ctx/Dockerfile")
    find "$root/tmp" "$root/var/tmp" -mindepth 1 -delete
    tar --numeric-owner -C "$root" -c . |
        docker import "${BASE_CHANGES[@]}" "${changes[@]}" --change "LABEL rookery.inputs=$inputs" \
            --message "debootstrap --include=${packages// /,} $SUITE" - "$tag" >/dev/null
    if ((${#later[@]})); then
        { printf 'FROM %s\n' "$tag"; printf '%s\n' "${later[@]}"; } |
            docker_build -q -t "$tag" - >/dev/null
    fi
}

build_service() {
    local name=$1 tag=rookery-$1:dev t0=$SECONDS inputs ctx=$here/$1
    [[ -f $ctx/Dockerfile ]] || die "missing $ctx/Dockerfile"
    image_exists "$BASE_IMAGE" || die "$BASE_IMAGE is missing: run build.sh base first"
    # Inputs: the context's files (names, modes, contents) and the base image.
    inputs=$({
        image_id "$BASE_IMAGE"
        cd "$ctx" && find . -type f -printf '%p %m\n' | LC_ALL=C sort
        cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha)
    if ((!rebuild)) && [[ $(image_label "$tag" rookery.inputs) == "$inputs" ]]; then
        log "$tag is up to date"
        return
    fi
    probe_build_network
    remember_old "$tag"
    if [[ $build_network == yes ]]; then
        log "docker build $tag"
        docker_build --force-rm -q "${proxy_args[@]}" --label "rookery.inputs=$inputs" \
            -t "$tag" "$ctx" >/dev/null
    else
        log "making $tag with debootstrap --include"
        import_service "$name" "$tag" "$inputs"
    fi
    log "built $tag in $((SECONDS - t0)) s"
}

# --- rookery-broker:dev, rookery-operator:dev ------------------------------------------------
# build_binary NAME BIN: the image rookery-NAME:dev from NAME/Dockerfile, FROM scratch with the
# binary rookery-NAME and the shared libraries it links.
build_binary() {
    local name=$1 bin=$2 tag="rookery-$1:dev" t0=$SECONDS ctx lib inputs
    [[ -x $bin ]] || die "no $name binary at $bin (cargo build --release -p rookery-$name, or set ROOKERY_${name^^}_BIN)"
    new_scratch
    ctx=$SCRATCH
    mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/data"
    cp "$repo/$name/Dockerfile" "$ctx/Dockerfile"
    install -m 0755 "$bin" "$ctx/rootfs/usr/local/bin/rookery-$name"
    # Exactly what ldd lists: "name => /path (addr)" and the loader's "/path (addr)".
    local ldd_out
    ldd_out=$(ldd "$ctx/rootfs/usr/local/bin/rookery-$name" 2>&1) || true
    if grep -q 'not found' <<<"$ldd_out"; then
        die "the $name needs libraries this host lacks: $ldd_out"
    fi
    while read -r lib; do
        mkdir -p "$ctx/rootfs$(dirname "$lib")"
        cp -L --preserve=mode "$lib" "$ctx/rootfs$lib"
    done < <(sed -n -e 's/^.* => \(\/[^ ]*\) (0x[0-9a-f]*)$/\1/p' \
                    -e 's/^[[:space:]]*\(\/[^ ]*\) (0x[0-9a-f]*)$/\1/p' <<<"$ldd_out")
    # The unprivileged user (nss only names it; USER is numeric) and name resolution.
    printf 'root:x:0:0:root:/root:/sbin/nologin\nrookery:x:65532:65532:rookery:/data:/sbin/nologin\n' \
        >"$ctx/rootfs/etc/passwd"
    printf 'root:x:0:\nrookery:x:65532:\n' >"$ctx/rootfs/etc/group"
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$ctx/rootfs/etc/nsswitch.conf"
    chmod 0644 "$ctx/rootfs/etc/"*
    inputs=$(cd "$ctx" && {
        find . -printf '%p %m %l\n' | LC_ALL=C sort
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha)
    if ((!rebuild)) && [[ $(image_label "$tag" rookery.inputs) == "$inputs" ]]; then
        log "$tag is up to date"
        return
    fi
    remember_old "$tag"
    log "docker build $tag from ${bin#"$repo"/} and $(find "$ctx/rootfs" -type f -name '*.so*' | wc -l) libraries"
    docker_build --force-rm -q --label "rookery.inputs=$inputs" -t "$tag" "$ctx" >/dev/null
    log "built $tag in $((SECONDS - t0)) s"
}

start=$SECONDS
if want base; then build_base; fi
for s in "${SERVICES[@]}"; do
    if want "$s"; then build_service "$s"; fi
done
if want broker; then build_binary broker "${ROOKERY_BROKER_BIN:-$repo/target/release/rookery-broker}"; fi
if want operator; then build_binary operator "${ROOKERY_OPERATOR_BIN:-$repo/target/release/rookery-operator}"; fi
remove_replaced
log "done in $((SECONDS - start)) s"
docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep '^rookery-' | sort >&2 || true
