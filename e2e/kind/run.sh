#!/usr/bin/env bash
# End-to-end test of the operator on a kind cluster: build the images, install the operator
# with Helm, run two MqttClusters, send MQTT messages through them, scale one to 5 and back to
# 3, and change a limit so the brokers roll. See e2e/kind/README.md.
#
# Usage: e2e/kind/run.sh [--keep] [--skip-build] [-h|--help]
#
#   --keep         leave the kind cluster running at the end, pass or fail (default: delete
#                  it on exit, even when it existed before the run)
#   --skip-build   use the images already in Docker (rookery-broker:dev, rookery-operator:dev,
#                  rookery-haproxy:dev, rookery-redis:dev, rookery-postgres:dev) instead of
#                  running cargo and e2e/images/build.sh
#   -h, --help     this text
#
# Environment:
#   KIND_CLUSTER      name of the kind cluster (default rookery-e2e); reused if it exists
#   KIND_NODE_IMAGE   node image for `kind create cluster --image` (default: kind's own)
#   KIND_WORKERS      worker nodes besides the control plane (default 0: one node)
#   WAIT_SECONDS      how long each wait may take (default 600)
#   ROOKERY_E2E_DIR   where the kubeconfig, CA certificate, logs and failure dumps go
#                     (default target/e2e-kind)
#   CARGO_TARGET_DIR  where cargo puts the binaries (default target)
#   ROOKERY_DEBIAN_MIRROR and the other variables of e2e/images/build.sh are passed to it.
#
# Needs docker, kind, kubectl, helm, cargo (unless --skip-build), mosquitto_pub and
# mosquitto_sub (Debian: mosquitto-clients), base64. e2e/images/build.sh needs root: when this
# script does not run as root, it runs build.sh through sudo.
#
# It writes nothing to ~/.kube/config: kubectl and helm use $ROOKERY_E2E_DIR/kubeconfig.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

CLUSTER=${KIND_CLUSTER:-rookery-e2e}
WAIT=${WAIT_SECONDS:-600}
WORKERS=${KIND_WORKERS:-0}
WORK=${ROOKERY_E2E_DIR:-$repo/target/e2e-kind}
TARGET=${CARGO_TARGET_DIR:-$repo/target}
# cargo runs in $repo below, so a relative CARGO_TARGET_DIR is relative to it.
[[ $TARGET == /* ]] || TARGET=$repo/$TARGET
NS=iot
OP_NS=rookery-system
RELEASE=rookery-operator
CRD=mqttclusters.rookery.dev
IMAGES=(rookery-broker:dev rookery-operator:dev rookery-haproxy:dev rookery-redis:dev rookery-postgres:dev)
# The two MqttClusters: minimal.yaml's (plain MQTT, anonymous) and cluster-tls.yaml's.
PLAIN=mqtt
TLS=mqtt-tls

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
log() { printf '[run.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
current_step="start"
step() {
    current_step=$*
    printf '\n[run.sh %(%H:%M:%S)T] ==> %s\n' -1 "$*" >&2
}

keep=0 build=1
while (($#)); do
    case $1 in
        --keep) keep=1 ;;
        --skip-build) build=0 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
[[ $WAIT =~ ^[0-9]+$ ]] || die "WAIT_SECONDS must be a number of seconds, not $WAIT"
[[ $WORKERS =~ ^[0-9]+$ ]] || die "KIND_WORKERS must be a number, not $WORKERS"

need=(docker kind kubectl helm mosquitto_pub mosquitto_sub base64)
((build)) && need+=(cargo)
for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null || die "$tool is not installed (see e2e/kind/README.md)"
done
docker info >/dev/null 2>&1 || die "cannot talk to the docker daemon"

mkdir -p "$WORK"
export KUBECONFIG=$WORK/kubeconfig

# --- clean-up and failure dump --------------------------------------------------------------
cluster_touched=0 # a kind cluster of this name exists (made or reused): delete it on exit
kube_up=0         # the API server answers: a failure dump is worth trying
bg_pids=()        # port-forwards and subscribers started here, stopped on exit

# reap PID: stop a background job started here and forget it (so that its id, which may be
# reused once it is reaped, is never signalled again).
reap() {
    local pid keep_pids=()
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for pid in "${bg_pids[@]}"; do
        [[ $pid == "$1" ]] || keep_pids+=("$pid")
    done
    bg_pids=("${keep_pids[@]}")
}

stop_bg() {
    local pid
    for pid in "${bg_pids[@]}"; do
        reap "$pid"
    done
}

# describe_unready NAMESPACE: `kubectl describe` of each pod whose Ready condition is not True.
describe_unready() {
    local ns=$1 name ready
    while read -r name ready; do
        [[ -n $name && $ready != True ]] || continue
        echo "--- kubectl describe pod $name -n $ns (not ready)"
        kubectl describe pod "$name" -n "$ns"
    done < <(kubectl get pods -n "$ns" -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')
}

# pod_logs NAMESPACE SELECTOR: every container's log of the matching pods, and the log of the
# previous container of those that restarted.
pod_logs() {
    local ns=$1 selector=$2 name restarts r total
    while read -r name restarts; do
        [[ -n $name ]] || continue
        echo "--- kubectl logs $name -n $ns --all-containers"
        kubectl logs "$name" -n "$ns" --all-containers --prefix --tail=2000
        total=0
        for r in $restarts; do total=$((total + r)); done
        if ((total > 0)); then
            echo "--- kubectl logs $name -n $ns --all-containers --previous ($total restarts)"
            kubectl logs "$name" -n "$ns" --all-containers --prefix --previous --tail=2000
        fi
    done < <(kubectl get pods -n "$ns" -l "$selector" -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.containerStatuses[*].restartCount}{"\n"}{end}')
}

dump() {
    echo "==================== diagnostics: failed at \"$current_step\" ===================="
    echo "--- kubectl get mqttclusters -A"
    kubectl get mqttclusters -A -o wide
    echo "--- kubectl describe mqttcluster -n $NS"
    kubectl describe mqttcluster -n "$NS"
    echo "--- status of each MqttCluster"
    kubectl get mqttclusters -n "$NS" -o jsonpath='{range .items[*]}{.metadata.name}{":\n"}{.status}{"\n"}{end}'
    echo "--- kubectl get all,pvc,pdb,networkpolicy -n $NS"
    kubectl get all,pvc,pdb,networkpolicy -n "$NS" -o wide
    echo "--- events in $NS"
    kubectl get events -n "$NS" --sort-by=.lastTimestamp
    echo "--- events in $OP_NS"
    kubectl get events -n "$OP_NS" --sort-by=.lastTimestamp
    echo "--- kubectl get pods -n $OP_NS"
    kubectl get pods -n "$OP_NS" -o wide
    describe_unready "$OP_NS"
    describe_unready "$NS"
    echo "--- operator logs"
    kubectl logs -n "$OP_NS" -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=operator" \
        --all-containers --prefix --tail=-1 --max-log-requests=10
    echo "--- broker logs"
    pod_logs "$NS" "app.kubernetes.io/name=rookery,app.kubernetes.io/component=broker"
    echo "--- HAProxy, Redis and PostgreSQL logs"
    pod_logs "$NS" "app.kubernetes.io/name=rookery,app.kubernetes.io/component in (load-balancer,redis,postgres)"
    echo "==================== end of diagnostics ===================="
}

on_exit() {
    local rc=$? file
    set +e
    stop_bg
    if ((rc != 0)); then
        log "FAILED at step \"$current_step\" (exit status $rc)"
        if ((kube_up)); then
            file=$WORK/failure-$(date +%Y%m%d-%H%M%S).txt
            dump 2>&1 | tee "$file"
            log "the diagnostics above are also in $file"
        fi
    fi
    if ((cluster_touched)); then
        if ((keep)); then
            log "kept the kind cluster $CLUSTER: export KUBECONFIG=$KUBECONFIG (or \`kind export kubeconfig --name $CLUSTER\`); delete it with \`kind delete cluster --name $CLUSTER\`"
        else
            log "deleting the kind cluster $CLUSTER (--keep keeps it)"
            kind delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >&2
        fi
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- waiting ---------------------------------------------------------------------------------
# until DESCRIPTION COMMAND...: run COMMAND every 2 s until it succeeds, for at most $WAIT s.
until_ok() {
    local what=$1 deadline=$((SECONDS + WAIT))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${WAIT}s waiting for $what"
        sleep 2
    done
}

has_phase() {
    [[ -n $(kubectl get mqttcluster "$1" -n "$NS" -o jsonpath='{.status.phase}' 2>/dev/null) ]]
}

# settled NAME REPLICAS: the operator has seen the latest spec (observedGeneration), the phase
# is Running and REPLICAS brokers exist and are ready. Prints the state every 15 s.
last_report=0
settled() {
    local name=$1 want=$2 line gen obs phase spec rep ready
    line=$(kubectl get mqttcluster "$name" -n "$NS" -o \
        jsonpath='{.metadata.generation}|{.status.observedGeneration}|{.status.phase}|{.spec.replicas}|{.status.replicas}|{.status.readyReplicas}' \
        2>/dev/null) || line=""
    IFS='|' read -r gen obs phase spec rep ready <<<"$line"
    if [[ $phase == Invalid ]]; then
        die "$name is Invalid: $(kubectl get mqttcluster "$name" -n "$NS" -o jsonpath='{.status.conditions[?(@.type=="ConfigValid")].message}')"
    fi
    if ((SECONDS - last_report >= 15)); then
        last_report=$SECONDS
        log "$name: generation ${gen:-?} observed ${obs:-?}, phase ${phase:-none}, replicas ${rep:-?}/${spec:-?}, ready ${ready:-?}"
    fi
    [[ -n $gen && $obs == "$gen" && $phase == Running && $spec == "$want" && $rep == "$want" && $ready == "$want" ]]
}

wait_settled() {
    last_report=$((SECONDS - 15))
    until_ok "MqttCluster $1 to be Running with $2 ready brokers" settled "$1" "$2"
    log "$1: Running, $2/$2 brokers ready"
}

# --- MQTT through a port-forward ---------------------------------------------------------------
# port_forward SERVICE PORT: forwards a free local port to the Service's PORT (one of its
# pods, HAProxy here); sets PF_PORT and PF_PID.
port_forward() {
    local svc=$1 port=$2 log_file=$WORK/port-forward-$1.log i
    PF_PORT=
    kubectl port-forward -n "$NS" "svc/$svc" ":$port" >"$log_file" 2>&1 &
    PF_PID=$!
    bg_pids+=("$PF_PID")
    for ((i = 0; i < 60; i++)); do
        PF_PORT=$(sed -n '/^Forwarding from 127\.0\.0\.1:[0-9]/{s/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p;q;}' "$log_file")
        [[ -z $PF_PORT ]] || return 0
        kill -0 "$PF_PID" 2>/dev/null || { cat "$log_file" >&2; die "kubectl port-forward svc/$svc exited"; }
        sleep 0.5
    done
    cat "$log_file" >&2
    die "kubectl port-forward svc/$svc did not start"
}

# round_trip LABEL TOPIC: a retained message read back by a new subscriber, then a live
# message from the publisher to a subscriber already connected. The connection options of
# mosquitto_pub and mosquitto_sub are in the arrays pub and sub_opts.
pub=()
sub_opts=()
round_trip() {
    local label=$1 topic=$2 i n out sub
    local retained="retained-$label-$RANDOM$RANDOM" live="live-$label-$RANDOM$RANDOM"

    # HAProxy may take a few seconds to see a broker that just became ready: retry.
    for ((i = 1; ; i++)); do
        mosquitto_pub "${pub[@]}" -q 1 -r -t "$topic/retained" -m "$retained" && break
        ((i < 15)) || die "$label: could not publish the retained message"
        sleep 2
    done
    # Retained messages reach the other brokers over the cluster links: a subscriber that
    # lands on another broker a moment too early sees nothing yet; it tries again.
    for ((i = 1; ; i++)); do
        out=$(mosquitto_sub "${sub_opts[@]}" -q 1 -t "$topic/retained" -C 1 -W 5 2>&1) || true
        [[ $out == "$retained" ]] && break
        ((i < 10)) || die "$label: the retained message did not come back (last output: $out)"
        sleep 2
    done
    log "$label: retained message published and read back"

    for ((i = 1; ; i++)); do
        out=$WORK/sub-$label.out
        mosquitto_sub "${sub_opts[@]}" -q 1 -t "$topic/live" -C 1 -W 60 >"$out" 2>&1 &
        sub=$!
        bg_pids+=("$sub")
        # Publish until the subscriber has its message (it may not have subscribed yet).
        for ((n = 0; n < 30; n++)); do
            kill -0 "$sub" 2>/dev/null || break
            mosquitto_pub "${pub[@]}" -q 1 -t "$topic/live" -m "$live" >/dev/null 2>&1 || true
            sleep 1
        done
        reap "$sub"
        grep -qxF "$live" "$out" && break
        ((i < 3)) || die "$label: the live message did not arrive (subscriber output: $(cat "$out"))"
        log "$label: no live message yet (subscriber said: $(tr '\n' ' ' <"$out")); again"
    done
    log "$label: live message published and received"

    mosquitto_pub "${pub[@]}" -q 1 -r -n -t "$topic/retained" || log "$label: could not clear the retained message (ignored)"
}

mqtt_plain() {
    port_forward "$PLAIN" 1883
    log "$PLAIN: port-forward svc/$PLAIN 127.0.0.1:$PF_PORT -> 1883"
    # Anonymous clients are allowed (minimal.yaml) and there is no ACL.
    pub=(-h 127.0.0.1 -p "$PF_PORT")
    sub_opts=("${pub[@]}")
    round_trip "$PLAIN" "e2e"
    reap "$PF_PID"
}

mqtt_tls() {
    local ca=$WORK/$TLS-ca.crt
    # The operator's CA for the server certificate, from the Secret <cluster>-tls.
    kubectl get secret "$TLS-tls" -n "$NS" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$ca"
    [[ -s $ca ]] || die "the Secret $TLS-tls has no ca.crt"
    port_forward "$TLS" 8883
    log "$TLS: port-forward svc/$TLS localhost:$PF_PORT -> 8883"
    # -h localhost, not 127.0.0.1: the clients check the certificate's names against the host
    # they were given, and cluster-tls.yaml adds localhost to them (tls.dnsNames) beside the
    # Service's names. So no --insecure: the chain and the name are both checked.
    # The ACL: `ingest` may write devices/ingest/telemetry/# (the %u pattern), `dashboard`
    # may read devices/#.
    pub=(-h localhost -p "$PF_PORT" --cafile "$ca" -u ingest -P "$INGEST_PW")
    sub_opts=(-h localhost -p "$PF_PORT" --cafile "$ca" -u dashboard -P "$DASHBOARD_PW")
    round_trip "$TLS" "devices/ingest/telemetry/e2e"
    reap "$PF_PID"
}

# Readiness of what sits beside the brokers: HAProxy, and the TLS cluster's stores.
wait_around() {
    local name=$1
    kubectl rollout status "deployment/$name-lb" -n "$NS" --timeout="${WAIT}s"
    if [[ $name == "$TLS" ]]; then
        kubectl rollout status "statefulset/$name-redis" -n "$NS" --timeout="${WAIT}s"
        kubectl rollout status "statefulset/$name-postgres" -n "$NS" --timeout="${WAIT}s"
    fi
}

# A password without characters the shell or mosquitto's options would trip on.
password() { head -c 18 /dev/urandom | base64 | tr -d '/+=\n'; }

start=$SECONDS

# --- 1. images ----------------------------------------------------------------------------------
if ((build)); then
    step "1. build the binaries and the images"
    (cd "$repo" && cargo build --release -p rookery-broker -p rookery-operator)
    build_env=(
        "ROOKERY_BROKER_BIN=$TARGET/release/rookery-broker"
        "ROOKERY_OPERATOR_BIN=$TARGET/release/rookery-operator"
    )
    for v in ROOKERY_DEBIAN_MIRROR http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [[ -z ${!v:-} ]] || build_env+=("$v=${!v}")
    done
    if ((EUID == 0)); then
        env "${build_env[@]}" "$repo/e2e/images/build.sh"
    else
        command -v sudo >/dev/null || die "e2e/images/build.sh needs root and sudo is not installed"
        log "e2e/images/build.sh needs root (debootstrap): running it with sudo"
        sudo env "${build_env[@]}" "$repo/e2e/images/build.sh"
    fi
else
    step "1. (--skip-build) check the images"
fi
for image in "${IMAGES[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 || die "image $image is missing (run without --skip-build)"
done

# --- 2. kind cluster -----------------------------------------------------------------------------
step "2. kind cluster $CLUSTER"
clusters=$(kind get clusters 2>/dev/null) || clusters=""
if grep -qxF "$CLUSTER" <<<"$clusters"; then
    log "reusing the existing kind cluster $CLUSTER"
    cluster_touched=1
    kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG"
else
    create=(kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 180s)
    [[ -z ${KIND_NODE_IMAGE:-} ]] || create+=(--image "$KIND_NODE_IMAGE")
    if ((WORKERS > 0)); then
        {
            echo "kind: Cluster"
            echo "apiVersion: kind.x-k8s.io/v1alpha4"
            echo "nodes:"
            echo "  - role: control-plane"
            for ((i = 0; i < WORKERS; i++)); do echo "  - role: worker"; done
        } >"$WORK/kind-config.yaml"
        create+=(--config "$WORK/kind-config.yaml")
    fi
    cluster_touched=1
    "${create[@]}"
fi
kubectl cluster-info >/dev/null || die "the kind cluster's API server does not answer"
kube_up=1
log "kind load docker-image: ${IMAGES[*]}"
kind load docker-image --name "$CLUSTER" "${IMAGES[@]}"

# --- 3. the operator ------------------------------------------------------------------------------
step "3. install the operator with Helm"
if kubectl get crd "$CRD" >/dev/null 2>&1; then
    # Helm installs crds/ on a first install only; a reused cluster may have an older CRD.
    kubectl apply --server-side -f "$repo/charts/rookery-operator/crds/"
fi
# The image's id as a pod annotation: on a reused cluster, a rebuilt rookery-operator:dev
# (same tag) then still rolls the operator's pods.
operator_id=$(docker image inspect -f '{{.Id}}' rookery-operator:dev)
helm upgrade --install "$RELEASE" "$repo/charts/rookery-operator" \
    --namespace "$OP_NS" --create-namespace \
    --set image.repository=rookery-operator \
    --set image.tag=dev \
    --set image.pullPolicy=Never \
    --set brokerImage=rookery-broker:dev \
    --set haproxyImage=rookery-haproxy:dev \
    --set logFormat=text \
    --set-string "podAnnotations.rookery\.dev/e2e-image-id=$operator_id" \
    --wait --timeout "${WAIT}s"
kubectl wait --for=condition=Established "crd/$CRD" --timeout=60s
kubectl rollout status "deployment/$RELEASE" -n "$OP_NS" --timeout="${WAIT}s"

# --- 4. the MqttClusters --------------------------------------------------------------------------
step "4. namespace $NS, Secrets, MqttClusters $PLAIN and $TLS"
if kubectl get namespace "$NS" >/dev/null 2>&1; then
    # A reused cluster: start from nothing (PVCs too, which outlive their MqttCluster and
    # would keep an old PostgreSQL password).
    log "deleting the namespace $NS left by an earlier run"
    kubectl delete namespace "$NS" --wait=true --timeout="${WAIT}s"
fi
kubectl create namespace "$NS"
DASHBOARD_PW=$(password)
INGEST_PW=$(password)
kubectl create secret generic mqtt-users -n "$NS" \
    --from-literal=dashboard="$DASHBOARD_PW" --from-literal=ingest="$INGEST_PW"
# minimal.yaml as it is, plus imagePullPolicy: Never (the images were loaded, not pushed).
# Its client Service stays a LoadBalancer whose address kind never fills in; the test goes
# through a port-forward, and the phase does not depend on it.
kubectl patch --local -f "$repo/manifests/examples/minimal.yaml" --type merge \
    -p '{"spec":{"imagePullPolicy":"Never"}}' -o yaml | kubectl apply -f -
kubectl apply -f "$here/cluster-tls.yaml"

# --- 5. wait, then MQTT ----------------------------------------------------------------------------
step "5. wait for both clusters, then MQTT through each"
for name in "$PLAIN" "$TLS"; do
    # `kubectl wait --for=jsonpath` fails at once, in older kubectl, while the field is absent.
    until_ok "MqttCluster $name to have a status" has_phase "$name"
    kubectl wait "mqttcluster/$name" -n "$NS" --for=jsonpath='{.status.phase}'=Running --timeout="${WAIT}s"
    wait_settled "$name" 3
    wait_around "$name"
done
kubectl get mqttclusters -A
mqtt_plain
mqtt_tls

# --- 6. day 2 ---------------------------------------------------------------------------------------
step "6a. scale $TLS to 5 brokers"
kubectl patch mqttcluster "$TLS" -n "$NS" --type merge -p '{"spec":{"replicas":5}}'
wait_settled "$TLS" 5
kubectl get mqttclusters -n "$NS"

step "6b. scale $TLS back to 3 brokers (drained first)"
kubectl patch mqttcluster "$TLS" -n "$NS" --type merge -p '{"spec":{"replicas":3}}'
wait_settled "$TLS" 3
kubectl get statefulset "$TLS" -n "$NS"
[[ $(kubectl get statefulset "$TLS" -n "$NS" -o jsonpath='{.spec.replicas}') == 3 ]] ||
    die "the StatefulSet $TLS does not have 3 replicas"
pod_gone() {
    local out
    out=$(kubectl get pod "$1" -n "$NS" --ignore-not-found -o name) || return 1
    [[ -z $out ]]
}
for gone in "$TLS-3" "$TLS-4"; do
    until_ok "pod $gone to go" pod_gone "$gone"
done

step "6c. upgrade $TLS: change spec.limits.maxInflight, wait for the rolling update"
hash_path='{.spec.template.metadata.annotations.rookery\.dev/config-hash}'
old_hash=$(kubectl get statefulset "$TLS" -n "$NS" -o jsonpath="$hash_path")
inflight=$(kubectl get mqttcluster "$TLS" -n "$NS" -o jsonpath='{.spec.limits.maxInflight}')
new_inflight=$((${inflight:-100} == 200 ? 150 : 200))
log "maxInflight ${inflight:-unset} -> $new_inflight"
kubectl patch mqttcluster "$TLS" -n "$NS" --type merge -p "{\"spec\":{\"limits\":{\"maxInflight\":$new_inflight}}}"
# The operator writes the new rookery.toml and its hash into the pod template; until it has,
# `rollout status` would report the old, finished rollout.
template_changed() {
    local h
    h=$(kubectl get statefulset "$TLS" -n "$NS" -o jsonpath="$hash_path")
    [[ -n $h && $h != "$old_hash" ]]
}
until_ok "the operator to change the StatefulSet's pod template" template_changed
kubectl rollout status "statefulset/$TLS" -n "$NS" --timeout="${WAIT}s"
wait_settled "$TLS" 3
new_hash=$(kubectl get statefulset "$TLS" -n "$NS" -o jsonpath="$hash_path")
toml=$(kubectl get configmap "$TLS-config" -n "$NS" -o jsonpath='{.data.rookery\.toml}')
grep -qxF "max_inflight = $new_inflight" <<<"$toml" ||
    die "the ConfigMap $TLS-config does not have max_inflight = $new_inflight"
pods=$(kubectl get pods -n "$NS" -l "app.kubernetes.io/instance=$TLS,app.kubernetes.io/component=broker" \
    -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.metadata.annotations.rookery\.dev/config-hash}{"\n"}{end}')
count=0
while read -r pod hash; do
    [[ -n $pod ]] || continue
    count=$((count + 1))
    [[ $hash == "$new_hash" ]] || die "broker pod $pod runs config ${hash:-?}, not the new $new_hash"
done <<<"$pods"
((count == 3)) || die "$count broker pods of $TLS, not 3: $pods"
log "$TLS: every broker runs the new configuration (max_inflight = $new_inflight)"
wait_around "$TLS"
kubectl get mqttclusters -A
mqtt_tls

step "done"
log "passed in $((SECONDS - start)) s"
