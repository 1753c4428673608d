# gunicorn settings for the shop (a Pyramid-style PasteDeploy app).
#
#     gunicorn -c gunicorn.conf.py --paste production.ini
#
# nginx (as www-data) proxies to the unix socket; the app runs unprivileged.
import os

bind = os.environ.get("SHOP_BIND", "unix:/run/shop/gunicorn.sock")
umask = 0o007
user = "nobody"
group = "nogroup"
workers = 2
worker_class = "gevent"
raw_env = [
    "SHOP_ENV=production",
    "SHOP_CURRENCY=EUR",
]
pidfile = os.environ.get("SHOP_PIDFILE")
accesslog = "-"
