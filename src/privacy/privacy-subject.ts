/** A person as the operator identifies them: contacts, and senders exactly as events store them. */
export interface PrivacySubject {
  contactIds: string[];
  senders: Array<{ source: string; senderId: string }>;
}

/** What the audit trail may keep of a subject: how many contacts and senders, and the channels; never who. */
export function describeSubject(subject: PrivacySubject): { contacts: number; senders: number; sources: string[] } {
  return {
    contacts: subject.contactIds.length,
    senders: subject.senders.length,
    sources: [...new Set(subject.senders.map((sender) => sender.source))].sort(),
  };
}
