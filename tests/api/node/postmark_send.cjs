// Sends with postmark.js, as an app would, to the host and server token given on stdin:
// {"host": "127.0.0.1:PORT", "token", "message": {...Postmark fields} | "batch": [...]}.
// Prints {"ok": true, "body"} (the SDK's answer) or {"ok": false, "code", "statusCode",
// "message"} (its error).
const postmark = require("postmark");

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", async () => {
  const { host, token, message, batch } = JSON.parse(input);
  const client = new postmark.ServerClient(token, { useHttps: false, requestHost: host });
  try {
    const body = batch ? await client.sendEmailBatch(batch) : await client.sendEmail(message);
    console.log(JSON.stringify({ ok: true, body }));
  } catch (error) {
    console.log(
      JSON.stringify({ ok: false, code: error.code, statusCode: error.statusCode, message: error.message }),
    );
  }
});
