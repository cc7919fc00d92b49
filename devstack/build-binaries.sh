#!/usr/bin/env bash
# Builds the local cluster from the Go module proxy, once per version, into a cache outside the
# repo: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl from
# k8s.io/kubernetes (through a wrapper module that swaps each staging module for its published
# k8s.io/* release), etcd from go.etcd.io/etcd/server/v3, helm, and the distribution registry.
# Prints the bin directory on stdout.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
REGISTRY_VERSION=${REGISTRY_VERSION:-v3.1.0}
CACHE=${POSEGEN_CACHE:-$HOME/.cache/posegen}
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-registry-$REGISTRY_VERSION"
log() { echo "[build-binaries] $*" >&2; }

mkdir -p "$BIN"
export GOFLAGS=-buildvcs=false CGO_ENABLED=0

build_kubernetes() {
  local names=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl) missing=()
  for n in "${names[@]}"; do [ -x "$BIN/$n" ] || missing+=("$n"); done
  [ ${#missing[@]} -eq 0 ] && return
  local mod="$CACHE/src/kubernetes-$K8S_VERSION"
  mkdir -p "$mod"
  log "building ${missing[*]} $K8S_VERSION (first time: 15-30 min on 2 cores)"
  local upstream_mod
  upstream_mod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" \
    | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local staging_version="v0.${K8S_VERSION#v1.}"
  {
    echo "module posegen.local/kubernetes-build"
    echo
    echo "go $(sed -n 's/^go //p' "$upstream_mod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # Every staging module (k8s.io/x => ./staging/src/k8s.io/x) points at its published release.
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$upstream_mod" \
      | while read -r m; do echo "replace $m => $m $staging_version"; done
  } >"$mod/go.mod"
  local n pkgs=()
  for n in "${names[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$n@$K8S_VERSION"); done
  (cd "$mod" && go get "${pkgs[@]}" >&2)
  local stamp=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    stamp+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    stamp+=" -X $pkg.gitCommit=module-proxy-$K8S_VERSION"
  done
  for n in "${missing[@]}"; do
    log "go build $n"
    (cd "$mod" && go build -trimpath -ldflags "-s -w $stamp" -o "$BIN/$n.tmp" "k8s.io/kubernetes/cmd/$n" && mv "$BIN/$n.tmp" "$BIN/$n")
  done
}

build_etcd() {
  [ -x "$BIN/etcd" ] && return
  local mod="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  log "building etcd $ETCD_VERSION"
  cat >"$mod/main.go" <<'GO'
// etcd's own main, linked from the published server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  [ -f "$mod/go.mod" ] || (cd "$mod" && go mod init posegen.local/etcd-build >&2)
  (cd "$mod" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 && go mod tidy >&2 \
    && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" . && mv "$BIN/etcd.tmp" "$BIN/etcd")
}

build_helm() {
  [ -x "$BIN/helm" ] && return
  log "building helm $HELM_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
}

build_registry() {
  [ -x "$BIN/registry" ] && return
  log "building registry $REGISTRY_VERSION"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" \
    "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION" >&2
}

build_etcd
build_helm
build_registry
build_kubernetes
echo "$BIN"
