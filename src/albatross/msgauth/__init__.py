"""Message authentication: DKIM, ARC, SPF, DMARC and Authentication-Results."""
