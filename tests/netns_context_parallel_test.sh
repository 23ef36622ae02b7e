#!/usr/bin/env bash
# Context parallelism on several "hosts" of one machine: kvc-shard workers
# and the owning kvc-worker each in a network namespace of their own, joined
# by a bridge in a namespace too (every address a 10.78.0.x inside them).
# Each process runs as
#     ip netns exec NS unshare --ipc --pid --fork --mount-proc --kill-child CMD
# so UCX cannot use shared memory between them and really uses TCP.
#
# Covers:
#   1. a sequence spread over two shards on other hosts generates exactly
#      what the same TokenSelect generates on one worker (greedy, same text);
#   2. a shard killed mid-generation: the sequence it held fails with a
#      clear error naming the shard and the tokens lost, while a sequence on
#      another shard, running at the same time, finishes and still matches.
#
# Usage: netns_context_parallel_test.sh KVC_SHARD KVC_WORKER MODEL_DIR
# Exit 0 passed, 1 failed, 77 skipped (not root, no namespaces, no model).
# Stops by itself (watchdog after 240 s) and removes every namespace it made.
set -euo pipefail

SHARD=${1:?usage: $0 KVC_SHARD KVC_WORKER MODEL_DIR}
WORKER=${2:?usage: $0 KVC_SHARD KVC_WORKER MODEL_DIR}
MODEL_DIR=${3:?usage: $0 KVC_SHARD KVC_WORKER MODEL_DIR}

. "$(dirname "${BASH_SOURCE[0]}")/netns_lib.sh"
netns_init kcp 240
[[ -f $MODEL_DIR/model.bin && -f $MODEL_DIR/tokenizer.bin ]] || skip "no stories15M model in $MODEL_DIR"
netns_bridge
for i in 1 2 3; do host "s$i" "10.78.0.2$i"; done
host w 10.78.0.100
ok "network: bridge + 4 namespaces (${P}s1..s3, ${P}w), 10.78.0.0/24"

declare -A SHARD_PID
start_shard() {
  local i=$1 addr="10.78.0.2$1"
  rm -f "$WORK/s$i.port"
  isolated "${P}s$i" "$SHARD" --listen="$addr:7100" --port_file="$WORK/s$i.port" --ucx_tls=tcp \
    --ucx_net_devices=eth0 >>"$WORK/s$i.log" 2>&1 &
  SHARD_PID[$i]=$!
  PIDS+=($!)
  disown "$!"
  for _ in $(seq 1 300); do
    [[ -s $WORK/s$i.port ]] && return 0
    kill -0 "${SHARD_PID[$i]}" 2>/dev/null || die "kvc-shard s$i exited: $(tail -n 5 "$WORK/s$i.log")"
    sleep 0.05
  done
  die "kvc-shard s$i did not come up in 15 s"
}
for i in 1 2 3; do start_shard "$i"; done
ok "kvc-shard s1..s3 listening (UCX tcp :7100), each in its own net, IPC and pid namespaces"

# A long prompt: ranges of 128 tokens move out once a layer holds 256.
PROMPT="Once upon a time, there was a little girl named Lily. $(for _ in $(seq 1 40); do
  printf 'She liked to play in the park with her red ball and her friend Tom. '
done)"
POLICY="tokenselect:init=4,k=64,local=32,theta=1,lse_block=128"
# generate NAME STEPS [--context_peers=...]: kvc-worker in ${P}w, output in $WORK/NAME.out.
generate() {
  local name=$1 steps=$2
  shift 2
  timeout 120 "${PDEATH[@]}" ip netns exec "${P}w" unshare --ipc --pid --fork --mount-proc --kill-child \
    "$WORKER" generate --model="$MODEL_DIR/model.bin" --tokenizer="$MODEL_DIR/tokenizer.bin" \
    --policy="$POLICY" --steps="$steps" --prompt="$PROMPT" --ucx_tls=tcp --ucx_net_devices=eth0 \
    --context_local_tokens=256 --context_range_tokens=128 "$@" >"$WORK/$name.out" 2>"$WORK/$name.log"
}
text() { cat "$WORK/$1.out"; }

# 1. Spread over s1 and s2 == one worker.
generate one 48 || die "one-worker run: $(tail -n 3 "$WORK/one.log")"
generate split 48 --context_peers=10.78.0.21:7100,10.78.0.22:7100 || die "split run: $(tail -n 3 "$WORK/split.log")"
grep -q 'tokenselect-cp(' "$WORK/split.log" || die "the split run did not use context parallelism"
[[ "$(text one)" == "$(text split)" ]] || die "the split run generated other text than one worker"
ok "1: a sequence spread over s1 and s2 generated the same 48 tokens as one worker"

# 2. s1 killed while A (on s1, s2) and B (on s3) generate.
generate a 4000 --context_peers=10.78.0.21:7100,10.78.0.22:7100 &
A=$!
generate b 48 --context_peers=10.78.0.23:7100 &
B=$!
PIDS+=("$A" "$B")
# Once A is decoding (its prompt read, its oldest ranges on s1 and s2, a
# few tokens out), kill s1. A stops by itself after ~170 tokens (EOS).
for _ in $(seq 1 1200); do
  [[ $(stat -c %s "$WORK/a.out" 2>/dev/null || echo 0) -gt $((${#PROMPT} + 40)) ]] && break
  kill -0 "$A" 2>/dev/null || break
  sleep 0.05
done
kill -KILL "${SHARD_PID[1]}"
set +e
wait "$A"
RA=$?
wait "$B"
RB=$?
set -e
[[ $RA -ne 0 ]] || die "A finished although the shard holding part of its context was killed"
grep -q 'is lost' "$WORK/a.log" || die "A failed without naming the lost shard: $(tail -n 3 "$WORK/a.log")"
grep -q '10.78.0.21:7100' "$WORK/a.log" || die "A's error does not name s1: $(tail -n 3 "$WORK/a.log")"
[[ $RB -eq 0 ]] || die "B, on s3 only, failed: $(tail -n 3 "$WORK/b.log")"
[[ "$(text one)" == "$(text b)" ]] || die "B generated other text than one worker"
ok "2: s1 killed mid-generation: A failed with \"$(grep -o 'the shard of tokens[^:]*' "$WORK/a.log" | head -n 1)\"; B on s3 finished, same text as one worker"
echo "PASSED"
