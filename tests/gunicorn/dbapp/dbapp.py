"""A Flask app on SQLAlchemy; DATABASE_URL names the database (SQLite here)."""

import os

from flask import Flask, jsonify
from sqlalchemy import create_engine, event, text

engine = create_engine(os.environ.get("DATABASE_URL", "sqlite:///dbapp.sqlite"))


@event.listens_for(engine, "connect")
def remember_who_opened(dbapi_connection, connection_record):
    connection_record.info["opened_by"] = os.getpid()


# Import-time work, as real apps do (create tables, warm caches): with preload_app it runs
# in the master and leaves a connection in the pool the workers inherit.
with engine.begin() as conn:
    conn.execute(text("CREATE TABLE IF NOT EXISTS hits (pid INTEGER)"))

app = Flask(__name__)


@app.get("/")
def index():
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO hits (pid) VALUES (:pid)"), {"pid": os.getpid()})
        hits = conn.execute(text("SELECT COUNT(*) FROM hits")).scalar_one()
        opened_by = conn.connection.info["opened_by"]
    return jsonify(worker=os.getpid(), connection_opened_by=opened_by, hits=hits)
