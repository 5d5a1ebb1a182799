"""The hot statements, written once per dialect (driver paramstyle ``pyformat`` for psycopg and PyMySQL).

PostgreSQL claims a batch in one statement (``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)
RETURNING``); MariaDB/MySQL have no ``UPDATE ... RETURNING``, so there the claim is a
``SELECT ... FOR UPDATE SKIP LOCKED`` and one ``UPDATE`` in the same transaction.
Times are the database server's clock in epoch seconds, so hosts with skewed clocks agree.
"""

from __future__ import annotations

from .schema import CLAIMED, DONE, WAITING, Tables


class Statements:
    def __init__(self, dialect: str, tables: Tables) -> None:
        self.postgres = dialect == "postgresql"
        t = tables.messages.name
        s = tables.state.name
        now = "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)" if self.postgres else "UNIX_TIMESTAMP(NOW(6))"
        self.now_sql = now
        ids = "id = ANY(%(ids)s)" if self.postgres else "id IN %(ids)s"
        self.publish = f"INSERT INTO {t} (queue, priority, not_before, body) VALUES (%(q)s, %(p)s, %(nb)s, %(b)s)"
        pick = (f"SELECT id FROM {t} WHERE queue = %(q)s AND status = {WAITING} AND not_before <= {now} "
                f"ORDER BY priority DESC, id LIMIT %(n)s FOR UPDATE SKIP LOCKED")
        if self.postgres:
            self.claim = (
                f"WITH c AS MATERIALIZED ({pick}) "
                f"UPDATE {t} AS m SET status = {CLAIMED}, owner = %(me)s, lease_until = {now} + %(lease)s, "
                f"deliveries = m.deliveries + 1 FROM c WHERE m.id = c.id "
                f"RETURNING m.id, m.priority, m.deliveries, m.body")
            self.claim_select = ""
            self.claim_update = ""
        else:
            self.claim = ""
            self.claim_select = pick.replace("SELECT id ", "SELECT id, priority, deliveries, body ", 1)
            self.claim_update = (f"UPDATE {t} SET status = {CLAIMED}, owner = %(me)s, lease_until = {now} + %(lease)s, "
                                 f"deliveries = deliveries + 1 WHERE {ids}")
        mine = f"{ids} AND owner = %(me)s AND status = {CLAIMED}"
        self.ack_delete = f"DELETE FROM {t} WHERE {mine}"
        self.ack_keep = (f"UPDATE {t} SET status = {DONE}, owner = NULL, lease_until = NULL, done_at = {now} "
                         f"WHERE {mine}")
        self.requeue = (f"UPDATE {t} SET status = {WAITING}, owner = NULL, lease_until = NULL, "
                        f"not_before = {now} + %(delay)s WHERE {mine}")
        self.extend = f"UPDATE {t} SET lease_until = {now} + %(lease)s WHERE status = {CLAIMED} AND owner = %(me)s"
        self.recover = (f"UPDATE {t} SET status = {WAITING}, owner = NULL, lease_until = NULL "
                        f"WHERE status = {CLAIMED} AND lease_until < {now}")
        self.owned = f"SELECT id FROM {t} WHERE status = {CLAIMED} AND owner = %(me)s"
        self.release = (f"UPDATE {t} SET status = {WAITING}, owner = NULL, lease_until = NULL "
                        f"WHERE status = {CLAIMED} AND owner = %(me)s")
        self.release_ids = (f"UPDATE {t} SET status = {WAITING}, owner = NULL, lease_until = NULL "
                            f"WHERE {mine}")
        self.size = f"SELECT COUNT(*) FROM {t} WHERE queue = %(q)s AND status = {WAITING}"
        self.purge = f"DELETE FROM {t} WHERE queue = %(q)s AND status = {WAITING}"
        self.clock = f"SELECT {now}"

        # --- state store ---------------------------------------------------------------------
        live = f"(expires_at IS NULL OR expires_at > {now})"
        self.st_get = f"SELECT v FROM {s} WHERE k = %(k)s AND {live}"
        self.st_drop_expired_key = f"DELETE FROM {s} WHERE k = %(k)s AND expires_at <= {now}"
        self.st_delete_live = f"DELETE FROM {s} WHERE k = %(k)s AND {live}"
        self.st_delete = f"DELETE FROM {s} WHERE k = %(k)s"
        self.st_scan = f"SELECT k, v FROM {s} WHERE k LIKE %(pat)s ESCAPE '!' AND {live}"
        self.st_sweep = f"DELETE FROM {s} WHERE expires_at <= {now}"
        exp = f"CASE WHEN %(ttl)s IS NULL THEN NULL ELSE {now} + %(ttl)s END"
        if self.postgres:
            exp = f"CASE WHEN CAST(%(ttl)s AS DOUBLE PRECISION) IS NULL THEN NULL ELSE {now} + %(ttl)s END"
            self.st_insert_new = f"INSERT INTO {s} (k, v, expires_at) VALUES (%(k)s, %(v)s, {exp}) ON CONFLICT (k) DO NOTHING"
            self.st_upsert = (f"INSERT INTO {s} (k, v, expires_at) VALUES (%(k)s, %(v)s, {exp}) "
                              f"ON CONFLICT (k) DO UPDATE SET v = excluded.v, expires_at = excluded.expires_at")
            self.st_incr = (f"INSERT INTO {s} (k, v, expires_at) VALUES (%(k)s, %(v)s, {exp}) "
                            f"ON CONFLICT (k) DO UPDATE SET v = CAST(CAST({s}.v AS BIGINT) + %(n)s AS TEXT) "
                            f"RETURNING v")
            self.st_incr_read = ""
        else:
            self.st_insert_new = f"INSERT IGNORE INTO {s} (k, v, expires_at) VALUES (%(k)s, %(v)s, {exp})"
            self.st_upsert = (f"INSERT INTO {s} (k, v, expires_at) VALUES (%(k)s, %(v)s, {exp}) "
                              f"ON DUPLICATE KEY UPDATE v = VALUES(v), expires_at = VALUES(expires_at)")
            self.st_incr = (f"INSERT INTO {s} (k, v, expires_at) VALUES (%(k)s, %(v)s, {exp}) "
                            f"ON DUPLICATE KEY UPDATE v = CAST(CAST(v AS SIGNED) + %(n)s AS CHAR)")
            self.st_incr_read = f"SELECT v FROM {s} WHERE k = %(k)s"
