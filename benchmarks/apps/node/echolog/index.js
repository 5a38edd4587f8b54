// Echo that logs 10 lines per invocation, for the official Node.js worker.
module.exports = async function (context, req) {
    for (let line = 0; line < 10; line++) {
        context.log(`echo log line ${line}`);
    }
    return {
        headers: { 'content-type': req.headers['content-type'] || 'application/octet-stream' },
        body: req.bufferBody,
    };
};
