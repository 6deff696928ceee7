// Reads {alg, pem, kid, claims, kidInPayload} as JSON on stdin; prints a compact JWT.
import { SignJWT, importPKCS8 } from "jose";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { alg, pem, kid, claims, kidInPayload } = JSON.parse(Buffer.concat(chunks).toString());
const key = await importPKCS8(pem, alg);
const payload = kidInPayload ? { ...claims, kid } : claims;
const header = kidInPayload ? { alg } : { alg, kid };
process.stdout.write(await new SignJWT(payload).setProtectedHeader(header).sign(key));
