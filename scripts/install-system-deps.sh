#!/usr/bin/env bash
# Install the Debian packages the tests and the demo run for real: Mosquitto, InfluxDB 1.6.7,
# VictoriaMetrics, the NATS server with JetStream (fleet tests), openssl (test CAs) and
# python3-venv. With --images, also what building and running the container images needs:
# podman, runc (podman's default runtime, crun, fails on these VMs' cgroups) and debootstrap
# (the base image is made from Debian's packages).
#
# Does nothing when every package is installed; needs root (or sudo) when one is missing.
#
# It installs packages and nothing else: it never stops, starts, enables or disables a system
# service. On a host that runs its own Mosquitto, InfluxDB or NATS server (say, the one Home
# Assistant uses) those keep running untouched; the tests start their own servers on free
# loopback ports. Note that on a host without them, Debian's mosquitto, influxdb and nats-server
# packages start their own service when first installed (that is the package's doing; nats-server's
# listens on 127.0.0.1:4222; remove or disable it yourself if unwanted).
set -euo pipefail

packages=(mosquitto mosquitto-clients influxdb victoria-metrics nats-server openssl python3-venv)
for arg in "$@"; do
  case "$arg" in
    --images) packages+=(podman runc debootstrap) ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option: $arg (known: --images)" >&2; exit 2 ;;
  esac
done

installed() {
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

need=()
for package in "${packages[@]}"; do
  installed "$package" || need+=("$package")
done
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${need[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
