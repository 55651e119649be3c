"""The PostgreSQL JDBC driver of the Spark engine: where its jar is, and the JDBC address of the
store's DSN.

* ``jdbc_jar``: the jar given by ``FEATURESTORE_SPARK_JDBC_JAR`` (default
  ``/usr/share/java/postgresql.jar``, Debian's ``libpostgresql-jdbc-java``); ``spark_session``
  puts it in ``spark.jars`` unless ``spark.jars`` is set explicitly (``--spark-conf
  spark.jars=...``), and Spark ships it to the executors;
* ``jdbc_target``: ``jdbc:postgresql://host:port/db`` and the connection properties (user and
  password among them, so the URL Spark logs holds no secret) of a ``postgresql://`` URL or a
  libpq ``key=value`` DSN;
* ``driver_missing``: the error naming the jar's path and how to install it.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
from urllib.parse import parse_qsl, unquote, urlsplit

from ..exceptions import ConfigurationError
from ..settings import ENV_PREFIX, Settings

__all__ = ["DEFAULT_JAR", "DRIVER", "JAR_SETTING", "driver_missing", "is_driver_missing", "java_message", "jdbc_jar",
           "jdbc_target"]

JAR_SETTING = f"{ENV_PREFIX}SPARK_JDBC_JAR"
DEFAULT_JAR = "/usr/share/java/postgresql.jar"
DRIVER = "org.postgresql.Driver"
#: rows per round trip: the PostgreSQL driver streams a result only with a fetch size (and no autocommit,
#: which Spark's PostgreSQL dialect turns off when a fetch size is set)
FETCH_SIZE = 10_000
#: libpq parameter -> the PostgreSQL JDBC driver's property of the same meaning
_PARAMS = {"sslmode": "sslmode", "sslrootcert": "sslrootcert", "sslcert": "sslcert", "sslkey": "sslkey",
           "sslpassword": "sslpassword", "application_name": "ApplicationName", "connect_timeout": "connectTimeout",
           "options": "options"}


def jdbc_jar() -> tuple[str, bool]:
    """The driver jar's path and whether it was set explicitly (``FEATURESTORE_SPARK_JDBC_JAR``)."""
    given = (Settings().spark_jdbc_jar or "").strip()
    return (given, True) if given else (DEFAULT_JAR, False)


def driver_missing() -> ConfigurationError:
    """The error of a Spark job that reads the event log without the PostgreSQL JDBC driver."""
    path, explicit = jdbc_jar()
    where = f"{JAR_SETTING}={path}" if explicit else f"{path} (the default of {JAR_SETTING})"
    state = ("does not exist" if not os.path.exists(path)
             else "holds no PostgreSQL driver or is not in this Spark session's spark.jars")
    return ConfigurationError(
        f"the Spark engine reads the PostgreSQL event log over JDBC and needs the PostgreSQL JDBC driver: "
        f"{where} {state}. Install it with `apt-get install libpostgresql-jdbc-java` (Debian, Ubuntu: "
        f"{DEFAULT_JAR}), or download postgresql-42.x.jar from https://jdbc.postgresql.org/download/ and set "
        f"{JAR_SETTING} to its path (or pass --spark-conf spark.jars=PATH)")


def is_driver_missing(exc: BaseException) -> bool:
    """Whether ``exc`` (a Spark or Py4J error) says the PostgreSQL driver class cannot be loaded."""
    text = f"{exc} {java_message(exc)}"
    return (DRIVER in text and "ClassNotFound" in text) or "No suitable driver" in text


def java_message(exc: BaseException) -> str:
    """The first line of the root Java cause of a Py4J error (``org.postgresql.util.PSQLException:
    ERROR: ...``), else of ``exc``."""
    text = str(exc)
    cause = getattr(exc, "java_exception", None)
    try:
        while cause is not None:
            text = str(cause.toString())
            cause = cause.getCause()
    except Exception:  # the gateway is gone: the last message read
        pass
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def jdbc_target(dsn: str) -> tuple[str, dict[str, str]]:
    """``(url, properties)`` of ``dsn``: the JDBC URL (host, port, database only) and the driver's
    properties (user, password, TLS settings, the fetch size)."""
    params = _url_params(dsn) if "://" in dsn else _keyword_params(dsn)
    env = os.environ  # what libpq (and asyncpg) fall back to; a password file (.pgpass) is not read
    host = params.pop("host", "") or env.get("PGHOST") or "localhost"
    if host.startswith("/") or host.startswith("@"):
        raise ConfigurationError("the Spark engine reads PostgreSQL over JDBC, which needs a TCP address: the DSN "
                                 "names a Unix socket; give host=NAME (and port) instead")
    port = params.pop("port", "") or env.get("PGPORT") or "5432"
    if "," in port:
        raise ConfigurationError("the Spark engine's JDBC address takes one port per host: write host=h1:p1,h2:p2")
    user = params.pop("user", "") or env.get("PGUSER") or getpass.getuser()
    password = params.pop("password", "") or env.get("PGPASSWORD", "")
    dbname = params.pop("dbname", "") or env.get("PGDATABASE") or user
    hosts = ",".join(h if re.search(r"(^[^:\[]+|\]):\d+$", h) else f"{h}:{port}" for h in host.split(","))
    props = {"user": user, "driver": DRIVER, "fetchsize": str(FETCH_SIZE)}
    if password:
        props["password"] = password
    for key, value in params.items():
        props[_PARAMS.get(key, key)] = value
    return f"jdbc:postgresql://{hosts}/{dbname}", props


def _url_params(dsn: str) -> dict[str, str]:
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigurationError(f"the PostgreSQL DSN must be a postgresql:// URL or key=value pairs, not a "
                                 f"{parts.scheme}:// URL")
    userinfo, sep, hostinfo = parts.netloc.rpartition("@")
    params: dict[str, str] = {}
    if sep:
        user, _, password = userinfo.partition(":")
        params.update(user=unquote(user), password=unquote(password))
    if hostinfo:
        params["host"] = unquote(hostinfo)
    if parts.path.strip("/"):
        params["dbname"] = unquote(parts.path.lstrip("/"))
    params.update({k: v for k, v in parse_qsl(parts.query) if v})
    return params


def _keyword_params(dsn: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in shlex.split(dsn):
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z_]+", key):
            raise ConfigurationError("the PostgreSQL DSN must be a postgresql:// URL or key=value pairs")
        params[key] = value
    return params
