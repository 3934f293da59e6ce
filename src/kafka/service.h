/*-------------------------------------------------------------------------
 *
 * service.h
 *	  The Kafka layer as the rest of the extension sees it: services that
 *	  plug into the background workers, registered from _PG_init.  Unlike
 *	  kafka.h, it does not include librdkafka.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_KAFKA_SERVICE_H
#define ES_KAFKA_SERVICE_H

extern void es_kafka_init(void);

#endif							/* ES_KAFKA_SERVICE_H */
