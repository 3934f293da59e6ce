/*-------------------------------------------------------------------------
 *
 * step.h
 *	  Steps in transactions of their own, for the background processes
 *	  (step.c): the delivery workers, the consumers and the Kafka clients
 *	  run their work through these.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_STEP_H
#define ES_STEP_H

#include "core/store.h"

typedef void (*EsStep) (EsStore *s, void *arg);

extern bool es_step_in_transaction(EsStep step, void *arg, bool report, bool *installed,
								   int *sqlerrcode, char **error);
extern ErrorData *es_step_in_subtransaction(void (*fn) (void *arg), void *arg);
extern char *es_error_text(ErrorData *edata);

#endif							/* ES_STEP_H */
