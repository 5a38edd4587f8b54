#!/usr/bin/env bash
# Timer, bash: reads the timer payload with jq when it is installed, logs on stderr and
# returns nothing (empty stdout). The input is only ever data here: never eval it.
set -euo pipefail
request=$(cat)
if command -v jq >/dev/null; then
  past_due=$(jq -r '.inputs.timer.IsPastDue' <<<"$request")
  next=$(jq -r '.inputs.timer.ScheduleStatus.Next // "?"' <<<"$request")
  [[ "$past_due" == "true" ]] && echo "warning: tick is running late" >&2
  echo "tick; next run at $next" >&2
else
  echo "tick" >&2
fi
