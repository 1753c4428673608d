"""greenfork master: settings, listeners, the supervising arbiter. Never imports gevent."""
