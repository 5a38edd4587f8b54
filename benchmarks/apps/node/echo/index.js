// Echo for the official Node.js worker (v3 programming model, which the worker bundles):
// the request body back as bytes, with its content type.
module.exports = async function (context, req) {
    return {
        headers: { 'content-type': req.headers['content-type'] || 'application/octet-stream' },
        body: req.bufferBody,
    };
};
