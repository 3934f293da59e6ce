/*-------------------------------------------------------------------------
 *
 * client.c
 *	  Kafka clients for the background workers: their configuration and
 *	  creation, librdkafka's logs and errors (recorded by callbacks, emitted
 *	  by the worker after its polls), the settings they were made with, and
 *	  the steps they run in transactions.  The mirror (mirror.c) and the
 *	  ingest (ingest.c) are built on these; see kafka.h for the rules.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "kafka/kafka.h"

#include "miscadmin.h"
#include "utils/memutils.h"

#include "core/guc.h"
#include "delivery/consumer.h"
#include "delivery/worker.h"

/* librdkafka's log lines, kept until the worker emits them. */
#define LOG_LINES			64

/*-------------------------------------------------------------------------
 * What callbacks record
 *-------------------------------------------------------------------------
 */

static char log_lines[LOG_LINES][512];
static int	log_levels[LOG_LINES];
static int	nlog_lines = 0;
static int	dropped_log_lines = 0;

static char client_error[512];	/* the last error a callback (or a poll) saw */
static bool client_error_new = false;

static void
on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	if (nlog_lines == LOG_LINES)
	{
		dropped_log_lines++;
		return;
	}
	snprintf(log_lines[nlog_lines], sizeof(log_lines[0]), "%s: %s: %s", rd_kafka_name(rk), fac, buf);
	log_levels[nlog_lines++] = level;
}

static void
on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	snprintf(client_error, sizeof(client_error), "%s: %s: %s", rd_kafka_name(rk),
			 rd_kafka_err2name((rd_kafka_resp_err_t) err), reason);
	client_error_new = true;
}

/*
 * es_kafka_client_error: record an error a poll returned, to be logged
 * with the callbacks' (es_kafka_emit_logs).
 */
void
es_kafka_client_error(const char *format,...)
{
	va_list		args;

	va_start(args, format);
	vsnprintf(client_error, sizeof(client_error), format, args);
	va_end(args);
	client_error_new = true;
}

/* es_kafka_emit_logs: emit what the callbacks recorded; from a service's pass, after polls. */
void
es_kafka_emit_logs(void)
{
	int			i;

	for (i = 0; i < nlog_lines; i++)
		ereport(log_levels[i] <= 3 ? WARNING : LOG,
				(errmsg("ultracore_es kafka: %s", log_lines[i])));
	if (dropped_log_lines > 0)
		ereport(LOG,
				(errmsg("ultracore_es kafka: %d more librdkafka log lines dropped", dropped_log_lines)));
	nlog_lines = 0;
	dropped_log_lines = 0;
	if (client_error_new)
		ereport(LOG, (errmsg("ultracore_es kafka: %s", client_error)));
	client_error_new = false;
}

/*-------------------------------------------------------------------------
 * Clients
 *-------------------------------------------------------------------------
 */

/* Set "key=value;key=value" properties on conf; false, with errstr, on the first bad one. */
static bool
set_properties(rd_kafka_conf_t *conf, const char *properties, char *errstr, size_t errlen)
{
	char	   *copy = pstrdup(properties ? properties : "");
	char	   *save = NULL;
	char	   *item;

	for (item = strtok_r(copy, ";", &save); item != NULL; item = strtok_r(NULL, ";", &save))
	{
		char	   *eq = strchr(item, '=');
		char	   *key = item;
		char	   *value;

		if (eq == NULL)
		{
			if (strspn(item, " \t\n") == strlen(item))
				continue;
			snprintf(errstr, errlen, "\"%s\" is not key=value", item);
			return false;
		}
		*eq = '\0';
		value = eq + 1;
		while (*key == ' ' || *key == '\t' || *key == '\n')
			key++;
		while (eq > key && (eq[-1] == ' ' || eq[-1] == '\t'))
			*--eq = '\0';
		while (*value == ' ' || *value == '\t')
			value++;
		if (rd_kafka_conf_set(conf, key, value, errstr, errlen) != RD_KAFKA_CONF_OK)
			return false;
	}
	return true;
}

/* es_kafka_client_conf: a new configuration with the settings every client of ours has. */
rd_kafka_conf_t *
es_kafka_client_conf(const char *properties, char *errstr, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();

	/* The user's properties first: they cannot undo what the rules need. */
	if (rd_kafka_conf_set(conf, "client.id", "ultracore_es", errstr, errlen) != RD_KAFKA_CONF_OK ||
		!set_properties(conf, properties, errstr, errlen) ||
		rd_kafka_conf_set(conf, "bootstrap.servers", es_kafka_brokers, errstr, errlen) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "log.queue", "true", errstr, errlen) != RD_KAFKA_CONF_OK)
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rd_kafka_conf_set_log_cb(conf, on_log);
	rd_kafka_conf_set_error_cb(conf, on_error);
	return conf;
}

/*
 * es_kafka_client_new: the client of conf, or NULL with a warning: conf NULL
 * means its settings were refused (errstr says why, hint which settings to
 * check).  conf is freed on failure; rd_kafka_new takes it only on success.
 */
rd_kafka_t *
es_kafka_client_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, char *errstr, size_t errlen, const char *hint)
{
	const char *what = type == RD_KAFKA_PRODUCER ? "producer" : "consumer";
	rd_kafka_t *rk;

	if (conf == NULL)
	{
		ereport(WARNING,
				(errmsg("ultracore_es kafka: invalid %s setting: %s", what, errstr),
				 errhint("Check %s.", hint)));
		return NULL;
	}
	rk = rd_kafka_new(type, conf, errstr, errlen);
	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		ereport(WARNING, (errmsg("ultracore_es kafka: could not create the %s: %s", what, errstr)));
	}
	return rk;
}

/*
 * es_kafka_own_source: the ce_source of what this store mirrors: ultracore_es.kafka_source, or
 * by default one that names this cluster and database, so that the ingest
 * recognizes the store's own events.  The default is a URI reference, as
 * CloudEvents wants: the database name is percent-encoded but for the
 * unreserved characters (a space is %20).
 */
const char *
es_kafka_own_source(void)
{
	static char source[NAMEDATALEN * 3 + 64];
	static char made_for[NAMEDATALEN * 3 + 64]; /* the database name source was made for */
	const char *name;
	char	   *p;

	if (es_kafka_source != NULL && es_kafka_source[0] != '\0')
		return es_kafka_source;
	/* The mirror asks for every message: made again only when the database setting changes. */
	if (source[0] != '\0' && strcmp(made_for, es_kafka_database_name()) == 0)
		return source;
	strlcpy(made_for, es_kafka_database_name(), sizeof(made_for));
	p = source + snprintf(source, sizeof(source), "/ultracore_es/" UINT64_FORMAT "/", GetSystemIdentifier());
	/* A database name is shorter than NAMEDATALEN: the bound only guards a longer setting. */
	for (name = made_for; *name && p + 4 <= source + sizeof(source); name++)
	{
		unsigned char c = (unsigned char) *name;

		if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			c == '-' || c == '.' || c == '_' || c == '~')
			*p++ = c;
		else
			p += snprintf(p, 4, "%%%02X", c);
	}
	*p = '\0';
	return source;
}

/*
 * es_kafka_configured: whether brokers are configured.  made_with holds
 * the settings a service's client was made with: when settings differ,
 * stop destroys the client, to be made again with the new ones; when
 * Kafka is off, it is destroyed for good.
 */
bool
es_kafka_configured(char **made_with, const char *settings, void (*stop) (void))
{
	if (es_kafka_brokers == NULL || es_kafka_brokers[0] == '\0')
	{
		stop();
		return false;
	}
	if (*made_with == NULL || strcmp(settings, *made_with) != 0)
	{
		stop();
		if (*made_with != NULL)
			pfree(*made_with);
		*made_with = MemoryContextStrdup(TopMemoryContext, settings);
	}
	return true;
}

/*
 * es_kafka_run: a step in a transaction of its own; an error is logged and
 * recorded on the consumer's row.
 */
bool
es_kafka_run(const char *consumer_name, EsStep step)
{
	char	   *error;

	if (es_step_in_transaction(step, NULL, true, NULL, NULL, &error))
		return true;
	es_consumer_record_failure(consumer_name, error);
	return false;
}

/* es_kafka_init: from _PG_init: the mirror and the ingest plug into the workers. */
void
es_kafka_init(void)
{
	es_kafka_mirror_init();
	es_kafka_ingest_init();
}
