#!/usr/bin/env python3
"""An S3 front for the tests that behaves like write-only credentials: every request is
passed to the S3 server behind it, except deletes (DELETE of an object, POST ?delete of
many), which get 403 AccessDenied the way S3 answers a credential without s3:DeleteObject.

Usage: deny_delete_proxy.py UPSTREAM_URL COUNT_FILE
Prints "ready PORT", serves on 127.0.0.1 until killed, and writes the number of deletes
it refused to COUNT_FILE after each one.
"""
import http.client, http.server, socketserver, sys, urllib.parse

upstream = urllib.parse.urlparse(sys.argv[1])
count_file = sys.argv[2]
refused = 0

DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
          b'<Message>Access Denied</Message></Error>')


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def deny(self):
        global refused
        refused += 1
        with open(count_file, "w") as f:
            f.write(str(refused))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(DENIED)))
        self.end_headers()
        self.wfile.write(DENIED)

    def forward(self):
        query = urllib.parse.urlparse(self.path).query
        if self.command == "DELETE" or (self.command == "POST" and "delete" in
                                        urllib.parse.parse_qs(query, keep_blank_values=True)):
            return self.deny()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
        # The Host header is passed as signed; the upstream here does not check it.
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            skip = ("transfer-encoding", "connection")
            if self.command != "HEAD":
                skip += ("content-length",)
            if k.lower() not in skip:
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


server = Server(("127.0.0.1", 0), Proxy)
print(f"ready {server.server_address[1]}", flush=True)
server.serve_forever()
