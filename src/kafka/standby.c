/*-------------------------------------------------------------------------
 *
 * standby.c
 *	  Whether the standbys named in ultracore_es.kafka_standby_slots have
 *	  flushed the WAL up to a point: the mirror sends an event only once
 *	  they have its commit, so that a failover to one of them never leaves
 *	  on Kafka an event the new primary lacks (the idea of PostgreSQL 17's
 *	  synchronized_standby_slots, for our own mirror).
 *
 * A physical slot's restart_lsn is the position its standby reported as
 * flushed (the walsender's PhysicalConfirmReceivedLocation): the standby
 * has written and fsynced the WAL before it, and a promotion replays it.
 * It is read from shared memory, as pg_replication_slots does, without a
 * query.  A slot that does not exist, is not physical, was invalidated or
 * never reported holds the mirror back: dropping the safety silently is
 * not for a ledger, the operator names the standbys that count.
 *
 * Copyright (c) 2026, ultracore_es developers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "kafka/kafka.h"

#include "replication/slot.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/varlena.h"

#include "core/guc.h"

/* What a named slot holds: found, physical, and the flushed position. */
typedef struct SlotReading
{
	bool		found;
	bool		physical;
	XLogRecPtr	flushed;
} SlotReading;

static SlotReading
slot_read(const char *name)
{
	SlotReading r = {false, false, InvalidXLogRecPtr};
	int			i;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (i = 0; i < max_replication_slots && !r.found; i++)
	{
		ReplicationSlot *slot = &ReplicationSlotCtl->replication_slots[i];

		if (!slot->in_use)
			continue;
		SpinLockAcquire(&slot->mutex);
		if (strcmp(NameStr(slot->data.name), name) == 0)
		{
			r.found = true;
			r.physical = SlotIsPhysical(slot);
			r.flushed = slot->data.restart_lsn;
		}
		SpinLockRelease(&slot->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	return r;
}

/*
 * es_kafka_standbys_have: whether every standby of
 * ultracore_es.kafka_standby_slots has flushed the WAL up to lsn; when
 * not, waiting_for says which one and why.  True when no slot is named.
 */
bool
es_kafka_standbys_have(XLogRecPtr lsn, char *waiting_for, size_t len)
{
	char	   *names = pstrdup(es_kafka_standby_slots ? es_kafka_standby_slots : "");
	List	   *slots;
	ListCell   *lc;

	if (!SplitIdentifierString(names, ',', &slots))
	{
		/* The setting's syntax is checked when it is set: only a list of names gets here. */
		snprintf(waiting_for, len, "ultracore_es.kafka_standby_slots is not a list of slot names");
		return false;
	}
	if (slots != NIL && ReplicationSlotCtl == NULL)
	{
		snprintf(waiting_for, len, "standby slots are named but this server has no replication slots (max_replication_slots = 0)");
		return false;
	}
	foreach(lc, slots)
	{
		const char *name = lfirst(lc);
		SlotReading r = slot_read(name);

		if (!r.found)
			snprintf(waiting_for, len, "replication slot \"%s\" does not exist", name);
		else if (!r.physical)
			snprintf(waiting_for, len, "replication slot \"%s\" is a logical slot, not a standby's", name);
		else if (XLogRecPtrIsInvalid(r.flushed))
			snprintf(waiting_for, len, "the standby of replication slot \"%s\" has not reported a flushed position (never connected, or the slot was invalidated)", name);
		else if (r.flushed < lsn)
			snprintf(waiting_for, len, "the standby of replication slot \"%s\" has flushed up to %X/%X, the events need %X/%X",
					 name, LSN_FORMAT_ARGS(r.flushed), LSN_FORMAT_ARGS(lsn));
		else
			continue;
		return false;
	}
	return true;
}

/* es_kafka_standby_wait_on: whether standby slots are named at all. */
bool
es_kafka_standby_wait_on(void)
{
	return es_kafka_standby_slots != NULL && es_kafka_standby_slots[0] != '\0';
}
