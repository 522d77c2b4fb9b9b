#!/usr/bin/env bash
# Installs (or removes) Strait's components on a VM as systemd services.
#
#   install.sh --role global|zone|gateway|dataplane[,...] [--from DIR] [--root DIR]
#   install.sh --uninstall [--root DIR]
#
# For each role: its binary in /usr/local/bin, a system user of its own (strait-global,
# strait-zone, strait-gateway, strait-dp), its unit in /etc/systemd/system, its state directory
# /var/lib/strait/<role> (mode 0700, the user's own; the sidecar has none) and commented
# examples of the files its unit reads in /etc/strait (*.example). The dataplane role also
# writes /etc/strait/dp.env: the sidecar user's uid, which the interception rules exempt.
#
# Running it again changes nothing. --uninstall removes what it installed (as listed in
# /etc/strait/.installed) and nothing else: env files, Dataplane files and state written since
# stay, and a state directory that holds data is kept (its path is printed).
#
# --root DIR installs into DIR instead of / (a disk image, a test). --from DIR is where the
# binaries are [default: this script's directory if they are there, else target/dist,
# target/release, then target/debug of the repository].
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
roles=()
root=/
from=
uninstall=false

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

die() {
    echo "install.sh: $*" >&2
    exit 2
}

while (($#)); do
    case $1 in
    --role) [[ $# -ge 2 ]] || die "--role needs a value"; IFS=, read -r -a more <<<"$2"; roles+=("${more[@]}"); shift 2 ;;
    --role=*) IFS=, read -r -a more <<<"${1#--role=}"; roles+=("${more[@]}"); shift ;;
    --root) [[ $# -ge 2 ]] || die "--root needs a directory"; root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --from) [[ $# -ge 2 ]] || die "--from needs a directory"; from=$2; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    --uninstall) uninstall=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done

[[ -d $root ]] || die "--root $root: not a directory"
root=$(cd "$root" && pwd)
r() { if [[ $root == / ]]; then echo "$1"; else echo "$root$1"; fi; }
manifest=$(r /etc/strait/.installed)

binary_of() {
    case $1 in
    global) echo strait-global ;; zone) echo strait-zone ;; gateway) echo strait-gateway ;; dataplane) echo strait-dp ;;
    *) die "--role $1: expected global, zone, gateway or dataplane" ;;
    esac
}
user_of() { case $1 in dataplane) echo strait-dp ;; *) echo "strait-$1" ;; esac; }
unit_of() { case $1 in dataplane) echo strait-dp@.service ;; *) echo "strait-$1.service" ;; esac; }

# useradd/userdel inside --root (shadow's --prefix), as they would run on the host.
prefix_args() { if [[ $root != / ]]; then echo --prefix "$root"; fi; }
has_user() { grep -q "^$1:" "$(r /etc/passwd)" 2>/dev/null; }
uid_of() { awk -F: -v u="$1" '$1 == u { print $3 }' "$(r /etc/passwd)"; }
gid_of() { awk -F: -v u="$1" '$1 == u { print $4 }' "$(r /etc/passwd)"; }

# Makes a directory (given as on the host) and the parents it lacks, recording those it made,
# and sets its mode and owner only where they differ (a second run touches nothing).
ensure_dir() { # path mode owner group
    local path=$1 partial=
    local -a parts
    IFS=/ read -r -a parts <<<"${path#/}"
    for part in "${parts[@]}"; do
        partial=$partial/$part
        if [[ ! -d $(r "$partial") ]]; then
            mkdir -m 0755 "$(r "$partial")"
            record dir "$partial"
        fi
    done
    path=$(r "$path")
    [[ $(stat -c %a "$path") == "${2#0}" ]] || chmod "$2" "$path"
    [[ $(stat -c %u:%g "$path") == "$3:$4" ]] || chown "$3:$4" "$path"
}
# Copies src to dest unless dest already has the same content, mode and owner.
put() { # src dest mode
    install -C -m "$3" -o 0 -g 0 "$1" "$2"
}
# Writes stdin to dest the same way.
put_text() { # dest mode
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    install -C -m "$2" -o 0 -g 0 "$tmp" "$1"
    rm -f "$tmp"
}

# Writes stdin as /etc/strait/<name> (an example, or a file of install.sh's own) and records it.
put_etc() { # name
    put_text "$(r "/etc/strait/$1")" 0644
    record file "/etc/strait/$1"
}

reload_systemd() {
    if [[ $root == / && -d /run/systemd/system ]]; then systemctl daemon-reload; fi
}

if $uninstall; then
    [[ ${#roles[@]} -eq 0 ]] || die "--uninstall takes no --role: it removes what the manifest lists"
    [[ -f $manifest ]] || { echo "nothing to uninstall: no $manifest"; exit 0; }
    users=()
    dirs=()
    # Files first, then directories deepest first, then the users that owned them.
    while read -r kind path; do
        case $kind in
        file) rm -f "$(r "$path")"; echo "removed $path" ;;
        dir) dirs=("$path" "${dirs[@]}") ;;
        user) users+=("$path") ;;
        esac
    done <"$manifest"
    rm -f "$manifest"
    for dir in "${dirs[@]}"; do
        if rmdir "$(r "$dir")" 2>/dev/null; then
            echo "removed $dir"
        elif [[ -d $(r "$dir") ]]; then
            echo "kept $dir: it holds data written since (remove it by hand when it is no longer needed)"
        fi
    done
    for user in "${users[@]}"; do
        if has_user "$user"; then
            # shellcheck disable=SC2046
            userdel $(prefix_args) "$user"
            echo "removed user $user"
        fi
        # userdel leaves the user's own group where login.defs does not say USERGROUPS_ENAB.
        if grep -q "^$user:" "$(r /etc/group)" 2>/dev/null; then
            # shellcheck disable=SC2046
            groupdel $(prefix_args) "$user"
        fi
    done
    reload_systemd
    exit 0
fi

[[ ${#roles[@]} -gt 0 ]] || die "give --role global|zone|gateway|dataplane (or --uninstall); see --help"
for role in "${roles[@]}"; do binary_of "$role" >/dev/null; done
if [[ -z $from ]]; then
    for candidate in "$here" "$here/../../target/dist" "$here/../../target/release" "$here/../../target/debug"; do
        if [[ -x $candidate/$(binary_of "${roles[0]}") ]]; then from=$candidate; break; fi
    done
    [[ -n $from ]] || die "no $(binary_of "${roles[0]}") next to this script nor under target/: build it (cargo build --profile dist --bins) or give --from DIR"
fi
for role in "${roles[@]}"; do
    [[ -x $from/$(binary_of "$role") ]] || die "--from $from: no executable $(binary_of "$role")"
done
for tool in useradd install; do command -v "$tool" >/dev/null || die "$tool is needed (Debian: the passwd and coreutils packages)"; done

# What this run installed, added to what earlier runs did; kept sorted so that a second run
# writes the same manifest.
entries=()
[[ -f $manifest ]] && mapfile -t entries <"$manifest"
record() { entries+=("$1 $2"); }

ensure_dir /etc/strait 0755 0 0
ensure_dir /etc/systemd/system 0755 0 0
ensure_dir /usr/local/bin 0755 0 0
for role in "${roles[@]}"; do
    binary=$(binary_of "$role")
    user=$(user_of "$role")
    unit=$(unit_of "$role")

    if ! has_user "$user"; then
        # shellcheck disable=SC2046
        useradd $(prefix_args) --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "Strait $role" "$user"
        record user "$user"
        echo "created user $user"
    fi
    uid=$(uid_of "$user")
    gid=$(gid_of "$user")

    put "$from/$binary" "$(r "/usr/local/bin/$binary")" 0755
    record file "/usr/local/bin/$binary"
    put "$here/$unit" "$(r "/etc/systemd/system/$unit")" 0644
    record file "/etc/systemd/system/$unit"

    case $role in
    global)
        ensure_dir /var/lib/strait/global 0700 "$uid" "$gid"
        put_etc global.env.example <<'EOF'
# /etc/strait/global.env: settings of strait-global.service (every flag of strait-global has
# its STRAIT_* variable; see strait-global --help). None is required.
#
# Names and addresses clients use to reach the REST API (in its certificate):
#STRAIT_API_TLS_NAMES=global.example.com,10.0.0.10
# Names and addresses zones use to reach zone sync:
#STRAIT_KDS_TLS_NAMES=global.example.com,10.0.0.10
#STRAIT_API_ADDRESS=0.0.0.0:7680
#STRAIT_KDS_ADDRESS=0.0.0.0:7685
#STRAIT_LOG=info
EOF
        ;;
    zone)
        ensure_dir /var/lib/strait/zone 0700 "$uid" "$gid"
        put_etc zone.env.example <<'EOF'
# /etc/strait/zone.env: settings of strait-zone.service, written by
#   straitctl zone register <zone> --output-format env --output <dir>
# as <dir>/zone.env (mode 0600: it holds the zone token). Copy it here, then
#   systemctl enable --now strait-zone
# The zone writes /var/lib/strait/zone/cp.env: copy it to /etc/strait/cp.env on the hosts of
# its gateways and sidecars.
#STRAIT_ZONE=zone-1
#STRAIT_GLOBAL_ADDRESS=https://global.example.com:7685
#STRAIT_ZONE_TOKEN=...
#STRAIT_GLOBAL_CA=...
# The name or address gateways and sidecars reach this zone at (also written to cp.env):
#STRAIT_DPS_TLS_NAMES=zone-1.example.com
EOF
        ;;
    gateway)
        ensure_dir /var/lib/strait/gateway 0700 "$uid" "$gid"
        put_etc gateway.env.example <<'EOF'
# /etc/strait/gateway.env: settings of strait-gateway.service, written by
#   straitctl zone register <zone> --output-format env --output <dir>
# as <dir>/gateway.env (mode 0600: it holds the zone-proxy token). It also reads
# /etc/strait/cp.env, a copy of the zone's /var/lib/strait/zone/cp.env.
#STRAIT_ZONE_PROXY_TOKEN=...
# The IP other zones and this zone's sidecars reach this gateway at:
#STRAIT_ADVERTISE_ADDRESS=10.0.1.20
#STRAIT_GATEWAY_NAME=gateway-1
EOF
        ;;
    dataplane)
        put_etc dp.env <<EOF
# Written by install.sh: the uid of the user strait-dp@ sidecars run as. The interception
# rules never redirect this user's own connections.
STRAIT_PROXY_UID=$uid
EOF
        put_etc dp-web.env.example <<'EOF'
# /etc/strait/dp-<workload>.env: settings of strait-dp@<workload>.service, written by
#   straitctl token dataplane --mesh default --service web --output-format env > dp-web.env
# (mode 0600: it holds the token). The sidecar runs the Dataplane /etc/strait/dp-<workload>.yaml
# (readable by the user strait-dp) and reaches its zone as /etc/strait/cp.env says.
#STRAIT_DATAPLANE_TOKEN=...
# Another admin port when several sidecars share the host:
#STRAIT_ADMIN_ADDRESS=127.0.0.1:9901
EOF
        put_etc dp-web.yaml.example <<'EOF'
# /etc/strait/dp-web.yaml: the Dataplane of the workload "web" (strait-dp@web.service).
type: Dataplane
mesh: default
name: web-1
spec:
  networking:
    # The address other sidecars and the gateway reach this workload at.
    address: 10.0.1.31
    inbound:
      # Other sidecars reach port 8443 with mTLS; the application listens on 8080.
      - port: 8443
        servicePort: 8080
        tags:
          strait.io/service: web
          strait.io/protocol: http
          version: v1
    outbound:
      # The application calls 127.0.0.1:7001 to reach the service backend.
      - port: 7001
        tags:
          strait.io/service: backend
    # With the interception rules (installed by the unit), the application may also call any
    # service by its address, and other hosts reach its ports through the sidecar only.
    transparentProxying:
      redirectPortOutbound: 15001
      redirectPortInbound: 15006
EOF
        ;;
    esac
    echo "installed $role: /usr/local/bin/$binary, /etc/systemd/system/$unit (user $user)"
done
printf '%s\n' "${entries[@]}" | sort -u | put_text "$manifest" 0644
reload_systemd
