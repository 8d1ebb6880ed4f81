"""A server from the standard library, as a Heroku or Dokku app would be: it listens on
$PORT (bound to $HOST) and says which version it is, for the redeploy test."""

import http.server
import json
import os

VERSION = os.environ.get("APP_VERSION", "1")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"version": VERSION, "path": self.path, "port": os.environ["PORT"]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler)
print(f"listening on {os.environ.get('HOST')}:{os.environ['PORT']}", flush=True)
server.serve_forever()
