"""Plain-language wording of delivery problems: from an RFC 3463 status code to what happened
and what the sender can do about it.

A status code is class.subject.detail. The class (2 success, 4 temporary, 5 permanent)
decides whether the report speaks of a failure, a delay or a delivery; the subject and
detail say what kind of problem it was. The table is looked up by "subject.detail" first,
then by subject alone (RFC 3463 §3 gives each subject a general meaning), so any valid code
gets words, and the class does not change the words: a full mailbox is a full mailbox
whether the receiver calls it temporary (4.2.2) or permanent (5.2.2). Codes from RFC 3463
and from the IANA registry of enhanced status codes (RFC 5248).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Explanation:
    """What went wrong, in a sentence, and what the sender can do about it."""

    what: str
    advice: str


_CHECK_ADDRESS = ("Check the address for typing mistakes, or ask the recipient for an "
                  "address that works.")
_ASK_RECIPIENT = "Try again later, or reach the recipient another way."
_POSTMASTER = ("If you think the message should have been accepted, forward this report to "
               "your own mail administrator.")

_BY_DETAIL: dict[str, Explanation] = {
    "1.1": Explanation("The receiving mail server says this mailbox does not exist.",
                       _CHECK_ADDRESS),
    "1.2": Explanation("The domain of this address does not exist, or it has no mail "
                       "server.", _CHECK_ADDRESS + " Look closely at the part after the @."),
    "1.3": Explanation("The address is not written correctly.", _CHECK_ADDRESS),
    "1.6": Explanation("The recipient no longer receives mail at this address.",
                       "Ask the recipient for their new address."),
    "1.10": Explanation("The domain of this address states that it accepts no mail at all "
                        "(a null MX record).", _CHECK_ADDRESS),
    "2.1": Explanation("The recipient's mailbox is disabled and accepts no messages.",
                       "Reach the recipient another way; the mailbox may have been closed."),
    "2.2": Explanation("The recipient's mailbox is full.",
                       "Send the message again later, or ask the recipient to make room."),
    "2.3": Explanation("The message is larger than the recipient's mailbox allows.",
                       "Send a smaller message: put large files on a file-sharing service "
                       "and send a link instead."),
    "3.4": Explanation("The message is too large for the receiving mail server.",
                       "Send a smaller message: put large files on a file-sharing service "
                       "and send a link instead."),
    "4.1": Explanation("The receiving mail server did not answer.", _ASK_RECIPIENT),
    "4.2": Explanation("The connection to the receiving mail server broke off.",
                       _ASK_RECIPIENT),
    "4.3": Explanation("The domain's mail servers could not be looked up (a DNS failure).",
                       "If this lasts, check the part of the address after the @; "
                       "otherwise the problem is usually fixed within hours."),
    "4.4": Explanation("No route to the recipient's mail server could be found.",
                       _CHECK_ADDRESS),
    "4.6": Explanation("The message was going round in a loop between mail servers, so "
                       "it was stopped.", "The recipient's mail setup has a fault (often "
                       "a forward pointing back at itself); let them or their mail "
                       "administrator know."),
    "4.7": Explanation("The message could not be delivered within the time allowed.",
                       _ASK_RECIPIENT),
    "5.3": Explanation("The message had too many recipients for the receiving server.",
                       "Send it again to fewer recipients at a time."),
    "6.7": Explanation("The message uses internationalised (non-ASCII) addresses, and the "
                       "receiving mail server does not support them (SMTPUTF8).",
                       "Send it again from and to addresses written in ASCII letters "
                       "only, if you and the recipient have them."),
    "7.1": Explanation("The receiving mail server refused the message because of its "
                       "policy (for example, it does not accept mail from you or your "
                       "server).", _POSTMASTER),
    "7.8": Explanation("Authentication failed: the credentials were not accepted.",
                       "Check the user name and password your mail program uses."),
    "7.23": Explanation("The receiving mail server refused the message because your "
                        "domain's SPF record does not allow this server to send for it.",
                        "Ask your domain's administrator to check its SPF record."),
    "7.25": Explanation("The receiving mail server refused the message because the "
                        "sending server's address has no matching reverse DNS name.",
                        _POSTMASTER),
    "7.26": Explanation("The receiving mail server refused the message because it could "
                        "not confirm that it really comes from your domain (SPF, DKIM and "
                        "DMARC checks failed).",
                        "Ask your domain's administrator to check its SPF, DKIM and DMARC "
                        "records."),
}

_BY_SUBJECT: dict[str, Explanation] = {
    "0": Explanation("The receiving mail server reported a problem it did not describe "
                     "further.", "Read the server's reply below; it may say more."),
    "1": Explanation("There is a problem with the recipient's address.", _CHECK_ADDRESS),
    "2": Explanation("There is a problem with the recipient's mailbox.", _ASK_RECIPIENT),
    "3": Explanation("The receiving mail system has a problem.", _ASK_RECIPIENT),
    "4": Explanation("There is a network or routing problem between the mail servers.",
                     _ASK_RECIPIENT),
    "5": Explanation("The mail servers could not agree on how to transfer the message.",
                     _POSTMASTER),
    "6": Explanation("The receiving mail server could not handle the message's content.",
                     "Try sending the message in a simpler form (plain text, fewer "
                     "attachments)."),
    "7": Explanation("The receiving mail server refused the message for security or "
                     "policy reasons.", _POSTMASTER),
}

_DELIVERED = Explanation("The message was delivered.", "")


def explain(status: str) -> Explanation:
    """Words for an RFC 3463 status code such as "5.1.1". A code that is not one (or one
    with an unknown subject) gets the general words of subject 0."""
    parts = status.split(".")
    if len(parts) != 3:
        return _BY_SUBJECT["0"]
    if parts[0] == "2":
        return _DELIVERED
    found = _BY_DETAIL.get(f"{parts[1]}.{parts[2]}")
    return found or _BY_SUBJECT.get(parts[1], _BY_SUBJECT["0"])
