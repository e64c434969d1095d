"""What a real report holds besides its story, for measuring how many techniques such text alone would
report: indicator lists, references, legal and navigation lines, tables of contents. Written for this
project (not from any dataset); none of it describes an adversary's behaviour, so every technique reported
from it is a false positive."""

from __future__ import annotations

BOILERPLATE = [
    # indicators of compromise
    "185.220.101.47",
    "45.137.21.9:443",
    "update-check[.]net",
    "hxxps://cdn-storage[.]org/assets/img/logo.png",
    "3f2b8c1d9e7a6b5c4d3e2f1a0b9c8d7e",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "winupd.dll 3f2b8c1d9e7a6b5c4d3e2f1a0b9c8d7e",
    "C:\\Users\\Public\\Libraries\\svchost.exe",
    "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\Updater",
    "invoice_2024_03.docm",
    "SHA256 | File name | First seen",
    "MD5: 5d41402abc4b2a76b9719d911017c592",
    # references
    "[1] https://www.example-security.com/blog/2024/03/operation-silent-ledger",
    "[2] Microsoft, “Protecting against credential theft,” 2023.",
    "References",
    "See also our previous report on this actor (link).",
    # legal, navigation, page furniture
    "© 2026 Example Security Inc. All rights reserved.",
    "This report is provided for informational purposes only and without warranty of any kind.",
    "TLP:CLEAR",
    "Page 4 of 17",
    "Table of contents",
    "1. Executive summary 2. Technical analysis 3. Indicators 4. Recommendations",
    "Subscribe to our newsletter to receive the latest threat research.",
    "Share this article on Twitter, LinkedIn or by email.",
    "Contact our incident response team 24/7 if you believe you are affected.",
    "About the authors: the Threat Research Team tracks state-sponsored and criminal groups.",
    "Figure 3: Timeline of the intrusion.",
    "Table 2: Observed infrastructure.",
    "Detection rules for these indicators are available to customers in the portal.",
    "We thank our partners for their collaboration in this investigation.",
]
