// HTTP, Node: greets ?name=... The request arrives as JSON on stdin; the answer goes to stdout.
const chunks = [];
process.stdin.on("data", (chunk) => chunks.push(chunk));
process.stdin.on("end", () => {
  const { inputs } = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const name = inputs.req.query.name;
  if (!name) {
    console.error("warning: no name given");
    return emit({ status: 400, body: "pass ?name=...\n" });
  }
  console.error(`greeting ${name}`);  // stderr lines are the invocation's log
  emit({ status: 200, headers: { "content-type": "text/plain" }, body: `Hello, ${name}!\n` });
});

function emit(response) {
  process.stdout.write(JSON.stringify({ returnValue: response }));
}
