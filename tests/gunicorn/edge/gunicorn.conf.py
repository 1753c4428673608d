# gunicorn settings for the edge service: behind a TCP load balancer (an AWS NLB, HAProxy in
# mode tcp) that passes TLS through and puts a PROXY v2 header before each connection.
# gunicorn ends TLS itself and offers HTTP/2.
#
#     gunicorn -c gunicorn.conf.py edgeapp:app
import os

bind = "0.0.0.0:8443"
workers = 2
worker_class = "gevent"
worker_connections = 2000
keepalive = 65  # above the load balancer's idle timeout

certfile = os.environ.get("EDGE_CERTFILE", "/etc/edge/tls/fullchain.pem")
keyfile = os.environ.get("EDGE_KEYFILE", "/etc/edge/tls/privkey.pem")
ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20"

http_protocols = "h2,h1"
http2_max_concurrent_streams = 64
http2_initial_window_size = 1048576
http2_max_header_list_size = 65536

proxy_protocol = "v2"
proxy_allow_ips = "127.0.0.1,10.0.0.0/8"  # the load balancer's addresses
forwarded_allow_ips = "127.0.0.1"  # the health checker's sidecar adds X-Forwarded-For

accesslog = "-"
errorlog = "-"
