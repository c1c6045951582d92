// Sends one message with mailgun.js, as an app would, to the base URL and key given on stdin:
// {"url", "key", "domain", "message": {...Mailgun fields; attachment/inline as
// [{"filename", "base64"}]}}. Prints {"status", "body"} (the SDK's answer or its error).
const FormData = require("form-data");
const Mailgun = require("mailgun.js");

let input = "";
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", async () => {
  const { url, key, domain, message } = JSON.parse(input);
  for (const field of ["attachment", "inline"]) {
    if (message[field]) {
      message[field] = message[field].map((f) => ({
        filename: f.filename,
        data: Buffer.from(f.base64, "base64"),
      }));
    }
  }
  const mg = new Mailgun(FormData).client({ username: "api", key, url });
  try {
    const body = await mg.messages.create(domain, message);
    console.log(JSON.stringify({ status: body.status, body }));
  } catch (error) {
    console.log(JSON.stringify({ status: error.status || 0, body: { message: String(error.details || error.message) } }));
  }
});
