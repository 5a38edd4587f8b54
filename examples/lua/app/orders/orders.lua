-- Queue trigger: a JSON order in (queue messages arrive as text: json.decode it); the
-- priced order to the blob bound to $return, a receipt to the `receipt` queue.
return function(inputs, context)
  local order = json.decode(inputs.msg)
  local total = 0
  for _, item in ipairs(order.items) do
    total = total + item.price * (item.quantity or 1)
  end
  local attempt = context.trigger_metadata.DequeueCount or 1
  log.info(string.format("order %s: %d items, total %.2f (attempt %s)",
    order.id, #order.items, total, attempt))
  order.total = total
  return order, { receipt = string.format("order %s: %.2f", order.id, total) }
end
