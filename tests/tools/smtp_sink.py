#!/usr/bin/env python3
"""A real SMTP server for the tests (aiosmtpd), on 127.0.0.1.

Usage: smtp_sink.py DIR MODE USER PASSWORD
  MODE starttls: plain connection, STARTTLS required before AUTH and mail
  MODE tls:      implicit TLS from the first byte (SMTPS)
It makes a self-signed certificate for 127.0.0.1 (DIR/cert.pem, for the client to trust),
accepts only USER/PASSWORD (AUTH PLAIN or LOGIN), stores each message as DIR/N.eml with
DIR/N.json (envelope, the authenticated user, whether the session was encrypted), prints
"ready PORT" and serves until killed.
"""
import asyncio, datetime, ipaddress, json, os, socket, ssl, sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

out, mode, user, password = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(out, exist_ok=True)

key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (
    x509.CertificateBuilder()
    .subject_name(name).issuer_name(name).public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                x509.DNSName("localhost")]), critical=False)
    # A self-signed server certificate the client trusts directly (ca_file): an end
    # entity, not a CA, as strict verifiers (webpki) require.
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    .sign(key, hashes.SHA256())
)
cert_path, key_path = os.path.join(out, "cert.pem"), os.path.join(out, "key.pem")
with open(cert_path, "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
with open(key_path, "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert_path, key_path)

count = 0


class Handler:
    async def handle_DATA(self, server, session, envelope):
        global count
        count += 1
        with open(os.path.join(out, f"{count}.eml"), "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(os.path.join(out, f"{count}.json"), "w") as f:
            json.dump({
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "authenticated": session.authenticated,
                "user": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
                # Implicit TLS wraps the socket below aiosmtpd, which then reports no session.ssl.
                "encrypted": session.ssl is not None or mode == "tls",
            }, f)
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login.decode() == user and auth_data.password.decode() == password)
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

common = dict(hostname="127.0.0.1", port=port, authenticator=authenticator)
if mode == "starttls":
    controller = Controller(Handler(), tls_context=context, require_starttls=True,
                            auth_require_tls=True, **common)
else:
    # Implicit TLS: the whole session is encrypted, though aiosmtpd does not count it as
    # "TLS" for auth_require_tls.
    controller = Controller(Handler(), ssl_context=context, auth_require_tls=False, **common)
controller.start()
print(f"ready {port}", flush=True)
try:
    asyncio.get_event_loop().run_forever()
except KeyboardInterrupt:
    pass
