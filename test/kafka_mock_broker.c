/*-------------------------------------------------------------------------
 *
 * kafka_mock_broker.c
 *	  A Kafka cluster for the tests and the demo: librdkafka's mock cluster
 *	  (rdkafka_mock.h), a real Kafka wire-protocol server on loopback, run
 *	  as a process of its own, with faults injected on command.
 *
 *	  kafka_mock_broker [-b brokers] [-t topic:partitions]...
 *	  kafka_mock_broker -P bootstrap.servers
 *
 * Prints "bootstrap.servers=host:port,..." and "ready", then reads commands
 * on standard input, one per line, answering "ok" or "error: ...":
 *
 *	topic NAME PARTITIONS		create a topic
 *	down BROKER					disconnect a broker (-1: all) and refuse connections
 *	up BROKER					accept connections again
 *	rtt BROKER MS				delay the broker's responses
 *	produce-errors N CODE		fail the next N produce requests with error CODE
 *	topic-error NAME CODE		answer CODE for topic NAME in metadata from now on
 *								(0: no error again)
 *	quit						stop
 *
 * At the end of its input it keeps serving until SIGTERM or SIGINT.
 *
 * With -P it is a producer instead, for the ingest tests (kcat sets the same
 * headers on every message): each input line is a message,
 *
 *	topic TAB key TAB name=value,name=value TAB value
 *
 * (an empty key or header list for none; values without tabs, commas or
 * newlines), produced in order by an idempotent producer; it exits 0 once
 * every message is acknowledged, 1 if one failed.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* Kafka protocol request type of produce requests. */
#define API_KEY_PRODUCE 0

static volatile sig_atomic_t stop = 0;

static void
on_signal(int sig)
{
	(void) sig;
	stop = 1;
}

static int
create_topic(rd_kafka_mock_cluster_t *mcluster, const char *name, int partitions)
{
	rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(mcluster, name, partitions, 1);

	if (err)
		printf("error: %s\n", rd_kafka_err2str(err));
	return err == RD_KAFKA_RESP_ERR_NO_ERROR;
}

static void
command(rd_kafka_mock_cluster_t *mcluster, char *line)
{
	char		name[256];
	int			a;
	int			b;
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;

	if (sscanf(line, "topic %255s %d", name, &a) == 2)
	{
		if (!create_topic(mcluster, name, a))
			return;
	}
	else if (sscanf(line, "down %d", &a) == 1)
		err = rd_kafka_mock_broker_set_down(mcluster, a);
	else if (sscanf(line, "up %d", &a) == 1)
		err = rd_kafka_mock_broker_set_up(mcluster, a);
	else if (sscanf(line, "rtt %d %d", &a, &b) == 2)
		err = rd_kafka_mock_broker_set_rtt(mcluster, a, b);
	else if (sscanf(line, "produce-errors %d %d", &a, &b) == 2)
	{
		rd_kafka_resp_err_t *errors = calloc(a, sizeof(rd_kafka_resp_err_t));
		int			i;

		for (i = 0; i < a; i++)
			errors[i] = (rd_kafka_resp_err_t) b;
		rd_kafka_mock_push_request_errors_array(mcluster, API_KEY_PRODUCE, a, errors);
		free(errors);
	}
	else if (sscanf(line, "topic-error %255s %d", name, &a) == 2)
		rd_kafka_mock_topic_set_error(mcluster, name, (rd_kafka_resp_err_t) a);
	else if (strncmp(line, "quit", 4) == 0)
		stop = 1;
	else
	{
		printf("error: unknown command: %s", line);
		return;
	}
	if (err)
		printf("error: %s\n", rd_kafka_err2str(err));
	else
		printf("ok\n");
}

static int	failed_deliveries = 0;

static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	(void) rk;
	(void) opaque;
	if (msg->err)
	{
		fprintf(stderr, "delivery failed: %s\n", rd_kafka_err2str(msg->err));
		failed_deliveries++;
	}
}

static int
produce(const char *bootstrap)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;
	char		errstr[512];
	char		line[65536];

	if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "enable.idempotence", "true", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		fprintf(stderr, "%s\n", errstr);
		return 1;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "could not create a producer: %s\n", errstr);
		return 1;
	}
	while (fgets(line, sizeof(line), stdin) != NULL)
	{
		char	   *fields[4];
		char	   *p = line;
		int			n;
		rd_kafka_headers_t *headers = rd_kafka_headers_new(8);
		char	   *item;
		char	   *save = NULL;
		rd_kafka_resp_err_t err;

		line[strcspn(line, "\n")] = '\0';
		for (n = 0; n < 4; n++)
		{
			fields[n] = p;
			p = (n < 3) ? strchr(p, '\t') : NULL;
			if (n < 3 && p == NULL)
				break;
			if (p != NULL)
				*p++ = '\0';
		}
		if (n < 3)
		{
			fprintf(stderr, "bad line: %s\n", line);
			return 1;
		}
		for (item = strtok_r(fields[2], ",", &save); item != NULL; item = strtok_r(NULL, ",", &save))
		{
			char	   *eq = strchr(item, '=');

			if (eq != NULL)
			{
				*eq = '\0';
				rd_kafka_header_add(headers, item, -1, eq + 1, -1);
			}
		}
		do
		{
			err = rd_kafka_producev(rk,
									RD_KAFKA_V_TOPIC(fields[0]),
									RD_KAFKA_V_KEY(fields[1], strlen(fields[1])),
									RD_KAFKA_V_VALUE(fields[3], strlen(fields[3])),
									RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
									RD_KAFKA_V_HEADERS(headers),
									RD_KAFKA_V_END);
			if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rk, 100);
		} while (err == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		if (err)
		{
			fprintf(stderr, "could not produce: %s\n", rd_kafka_err2str(err));
			rd_kafka_headers_destroy(headers);
			return 1;
		}
		rd_kafka_poll(rk, 0);
	}
	while (rd_kafka_outq_len(rk) > 0)
		rd_kafka_poll(rk, 100);
	rd_kafka_destroy(rk);
	return failed_deliveries > 0;
}

int
main(int argc, char **argv)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_mock_cluster_t *mcluster;
	rd_kafka_t *rk;
	char		errstr[512];
	char		line[1024];
	struct sigaction sa;
	int			brokers = 3;
	int			opt;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 3 && strcmp(argv[1], "-P") == 0)
		return produce(argv[2]);
	/* Without SA_RESTART: a signal interrupts the wait for a command. */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	/* The handle only carries the cluster; it never connects. */
	if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
	{
		fprintf(stderr, "%s\n", errstr);
		return 1;
	}
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL)
	{
		fprintf(stderr, "could not create a handle: %s\n", errstr);
		return 1;
	}

	while ((opt = getopt(argc, argv, "b:t:")) != -1)
		if (opt == 'b')
			brokers = atoi(optarg);
	mcluster = rd_kafka_mock_cluster_new(rk, brokers);
	if (mcluster == NULL)
	{
		fprintf(stderr, "could not create the mock cluster\n");
		rd_kafka_destroy(rk);
		return 1;
	}
	optind = 1;
	while ((opt = getopt(argc, argv, "b:t:")) != -1)
		if (opt == 't')
		{
			char	   *colon = strrchr(optarg, ':');

			if (colon == NULL)
			{
				fprintf(stderr, "-t takes topic:partitions\n");
				return 1;
			}
			*colon = '\0';
			if (!create_topic(mcluster, optarg, atoi(colon + 1)))
				return 1;
		}

	printf("bootstrap.servers=%s\n", rd_kafka_mock_cluster_bootstraps(mcluster));
	printf("ready\n");
	while (!stop && fgets(line, sizeof(line), stdin) != NULL)
		command(mcluster, line);
	while (!stop)
		pause();

	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(rk);
	return 0;
}
