#!/usr/bin/env bash
# One-time set-up for running kemari and its tests on a fresh Debian machine,
# as root: the Debian packages the build and tests need, and the reference
# guest (built with gcc, never committed). Safe to run again: it only does
# what is missing. Deno itself comes from the npm registry (npx deno@2.9.6).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/linux/kvm.h ] || need+=(linux-libc-dev)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v bridge >/dev/null 2>&1 || need+=(iproute2)
# Real clients for the network and Redis tests and the demo.
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
# The RDMA transport's symbol and ABI checks run against the real rdma-core.
[ -f /usr/include/infiniband/verbs.h ] || need+=(libibverbs-dev)
[ -f /usr/include/rdma/rdma_cma.h ] || need+=(librdmacm-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ ! -e /dev/kvm ]; then
  echo "setup: warning: /dev/kvm is missing; kemari run and the VM tests need KVM" >&2
fi

deno run -A guest/build.ts
