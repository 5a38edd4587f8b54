-- Timer: the host sends { Schedule = ..., ScheduleStatus = { Next = ... }, IsPastDue = ... }.
return function(inputs)
  local timer = inputs.timer
  if timer.IsPastDue then
    log.warn("tick is running late")
  end
  local status = timer.ScheduleStatus or {}
  log.info("tick; next run at " .. (status.Next or "?"))
end
