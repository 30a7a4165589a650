#!/usr/bin/env python3
"""Generate the binary sample documents in ``sample_docs/``.

The sample corpus describes the fictional company "Northwind Lattice GmbH".
This script writes the two binary files of that corpus:

* ``sample_docs/employee-handbook.pdf`` (reportlab / platypus, with a text
  layer, a printed table of contents and PDF outline bookmarks)
* ``sample_docs/benefits.docx`` (python-docx, Heading 1/2 styles, bullet
  list and a table)

The remaining files (``it-security.md``, ``onboarding.html`` and
``office-faq.txt``) are maintained by hand.

Both outputs are deterministic: running the script twice produces
byte-identical files (reportlab ``invariant=1``; fixed DOCX core properties
and fixed ZIP timestamps).

Requirements (not project dependencies, use a throwaway virtualenv)::

    python3 -m venv /tmp/sdvenv
    /tmp/sdvenv/bin/pip install reportlab python-docx pypdfium2
    /tmp/sdvenv/bin/python scripts/make_sample_docs.py [--verify]

``--verify`` re-opens the PDF with pypdfium2 and checks the text layer,
the outline (TOC) page indices and the per-diem table rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "sample_docs"
PDF_PATH = OUT_DIR / "employee-handbook.pdf"
DOCX_PATH = OUT_DIR / "benefits.docx"

DOMAIN = "northwind-lattice.example"

# ---------------------------------------------------------------------------
# Employee handbook content
# ---------------------------------------------------------------------------
# Block types: ("p", text) | ("pk", text) | ("h2", title) | ("bullets", [text, ...])
#              ("table", {"header": [...], "rows": [[...], ...], "widths": [...]})
# "pk" is a paragraph kept on the same page as the following block (e.g. a table).
# Text uses reportlab paragraph mark-up, so "&" must be written as "&amp;".

PER_DIEM_ROWS = [
    ["Hamburg", "130", "28"],
    ["Berlin", "140", "28"],
    ["Munich", "160", "28"],
    ["Lisbon", "140", "36"],
    ["Porto", "110", "32"],
    ["London", "210", "52"],
    ["Paris", "190", "53"],
    ["Milan", "160", "42"],
    ["Chicago", "240", "59"],
    ["Other destinations", "120", "28"],
]

HANDBOOK = [
    (
        "1. Welcome",
        [
            ("p", "Welcome to Northwind Lattice GmbH. Since our founding in Hamburg in 2009, we have "
                  "grown from a three-person engineering office into a company of about 300 people who "
                  "design, build and support industrial sensors for vibration, temperature and pressure "
                  "monitoring. Our sensors and the Lattice Edge gateway run in more than 30 countries."),
            ("p", "We work from two offices. Our headquarters at Hafenkante 14, 20457 Hamburg, houses "
                  "management, hardware engineering, the assembly hall and the calibration laboratory; "
                  "roughly 200 colleagues work there. Our Lisbon office at Rua do A\u00e7\u00facar 88, "
                  "1950-010 Lisboa, opened in 2017 and is home to about 100 colleagues in software "
                  "development, data science and customer support."),
            ("p", "This handbook explains the rules that apply to everyone at Northwind Lattice. Where "
                  "local law in Germany or Portugal grants you more favourable terms, local law applies, "
                  "and your employment contract takes precedence over this handbook."),
            ("p", "<i>\u201cWe build sensors that people rely on to keep their machines safe. We want to be "
                  "just as reliable for each other.\u201d</i> \u2014 Dr. Henrike Albers, Chief Executive "
                  "Officer and co-founder"),
            ("h2", "1.1 About This Handbook"),
            ("p", "People &amp; Culture maintains this handbook and reviews it once a year; questions go "
                  "to Marta Quintela, Head of People &amp; Culture. Security rules are described in the "
                  "IT Security Guidelines, benefits in the Benefits Overview, and practical questions "
                  "about the offices are answered in the Office FAQ."),
        ],
    ),
    (
        "2. Working Hours",
        [
            ("p", "The regular working time for full-time employees is 39 hours per week, spread over "
                  "Monday to Friday. Part-time arrangements are possible in almost every role. Working time may be "
                  "scheduled between 06:30 and 20:00 on working days. Work on Saturdays, Sundays or "
                  "public holidays requires prior approval from your line manager, except in "
                  "emergencies on customer installations."),
            ("h2", "2.1 Core Hours and Flexitime"),
            ("p", "We use flexitime with core hours. Core hours are 10:00 to 15:00 from Monday to "
                  "Thursday and 10:00 to 13:00 on Fridays. During core hours you are expected to be "
                  "available for your team, either in the office or remotely. Outside core hours you "
                  "can organise your day freely, as long as team coverage and customer commitments "
                  "are met."),
            ("p", "Hours worked above or below your contractual time are recorded in your flexitime "
                  "account. At the end of each month the balance may not exceed plus 40 hours or fall "
                  "below minus 20 hours. If your balance exceeds plus 40 hours, agree with your line "
                  "manager on how to reduce it within the following month. Hours above the limit that "
                  "were not approved as overtime are forfeited."),
            ("h2", "2.2 Time Recording"),
            ("p", "All employees record their working time in Chronos, our time recording system, no "
                  "later than the end of the following working day. The statutory break rules apply: at least 30 "
                  "minutes of break if you work more than six hours and at least 45 minutes if you work "
                  "more than nine hours. The maximum working time is ten hours per day."),
            ("p", "Overtime is work beyond the flexitime limits and must be approved in advance by your "
                  "line manager in Chronos. Approved overtime is compensated with time off within three "
                  "months."),
            ("h2", "2.3 Hybrid and Remote Work"),
            ("p", "Most roles can be done partly from home. Employees may work remotely up to three days "
                  "per week, in agreement with their team. Each team chooses one anchor day per week on "
                  "which everyone is in the office."),
            ("p", "Working remotely from another country is allowed for up to 20 working days per "
                  "calendar year, only within the European Union, and requires written approval from "
                  "People &amp; Culture at least two weeks in advance."),
        ],
    ),
    (
        "3. Leave and Vacation",
        [
            ("h2", "3.1 Annual Vacation"),
            ("p", "All full-time employees in Hamburg and Lisbon receive 30 working days of paid vacation "
                  "per calendar year, based on a five-day week. Part-time employees who work fewer days "
                  "per week receive a proportional number of days. In your first and last year of "
                  "employment, vacation is calculated pro rata for each full month of employment. In "
                  "addition, 24 December and 31 December are paid days off for everyone."),
            ("p", "Vacation should be used in the year in which it is earned. Up to five unused days may "
                  "be carried over to the following year; carried-over days must be taken by 31 March, "
                  "after which they expire."),
            ("h2", "3.2 Requesting Leave"),
            ("p", "Request vacation in the Lattice People portal under <b>Time Off</b>. For absences of "
                  "more than five consecutive working days, submit your request at least four weeks in "
                  "advance; for shorter absences, one week is enough. Your line manager approves or "
                  "declines the request within five working days."),
            ("h2", "3.3 Sick Leave"),
            ("p", "If you are ill and unable to work, inform your line manager before 09:30 on the first "
                  "day of absence, by phone or message, and record the absence in Lattice People. If the "
                  "illness lasts more than three calendar days, a medical certificate is required from "
                  "the fourth day. In Germany, doctors send the electronic certificate (eAU) directly to "
                  "the health insurer; in Portugal, upload the certificate in Lattice People. If you fall "
                  "ill during your vacation, the days "
                  "covered by a medical certificate are not counted as vacation."),
            ("h2", "3.4 Special Leave"),
            ("pk", "For certain personal events you receive paid special leave in addition to your "
                  "vacation. Special leave must be taken at the time of the event and is requested in "
                  "Lattice People under <b>Special Leave</b>."),
            ("table", {
                "header": ["Occasion", "Paid days"],
                "rows": [
                    ["Your own wedding or civil partnership", "2"],
                    ["Birth of your child (partner who did not give birth)", "2"],
                    ["Death of a spouse, partner, child or parent", "3"],
                    ["Death of a sibling or grandparent", "1"],
                    ["Moving house (once per calendar year)", "1"],
                ],
                "widths": [120, 30],
                "align_right_from": 1,
            }),
            ("p", "Parental leave and maternity protection follow German and Portuguese law."),
        ],
    ),
    (
        "4. Travel and Expenses",
        [
            ("p", "We travel when it adds value, choose the most economical reasonable option and prefer "
                  "rail over air. These rules apply to all business trips, including trips between our "
                  "Hamburg and Lisbon offices."),
            ("h2", "4.1 Travel Approval"),
            ("p", "Every business trip must be approved before anything is booked. Create a travel "
                  "request in TripDesk, our travel booking portal, with the purpose, the dates and the "
                  "estimated total cost, including transport, accommodation and meals."),
            ("bullets", [
                "Trips with an estimated total cost of up to 2,000 EUR are approved by your line manager.",
                "Trips with an estimated total cost of more than 2,000 EUR must be approved by your line "
                "manager and then by the Chief Financial Officer, Jonas Erdmann.",
                "Trips to countries outside the European Union additionally require a travel risk check "
                "by People &amp; Culture, regardless of cost.",
            ]),
            ("p", "Bookings made without an approved travel request will not be reimbursed. If a trip "
                  "becomes more than 10 percent more expensive than approved, the request must be "
                  "approved again."),
            ("h2", "4.2 Booking Transport and Accommodation"),
            ("p", "Book transport and hotels through TripDesk, which applies our negotiated rates "
                  "automatically. Use the train if the journey takes less than five hours; for example, "
                  "travel between Hamburg and Berlin is always by train. Second class is the standard; "
                  "first class is allowed for train journeys of more than three hours. Flights are booked "
                  "in economy class. Business class is only permitted for flights with a scheduled "
                  "duration of more than eight hours. Rental cars are limited to the compact category. "
                  "If you use your private car for a business trip, you receive 0.30 EUR per kilometre."),
            ("p", "Hotels must stay within the hotel cap for the destination listed in section 4.3. If no "
                  "suitable hotel is available within the cap, for example during trade fairs, explain "
                  "the reason in the TripDesk booking."),
            ("h2", "4.3 Per-Diem Rates"),
            ("pk", "For each full day of business travel you receive a daily meal allowance (per-diem) and "
                  "may book a hotel up to the hotel cap per night. The rates below apply from 1 March "
                  "2025. For destinations that are not listed, the row \u201cOther destinations\u201d "
                  "applies."),
            ("table", {
                "header": ["City", "Hotel cap EUR", "Meals EUR per day"],
                "rows": PER_DIEM_ROWS,
                "widths": [70, 45, 45],
                "align_right_from": 1,
                "caption": "Table 1: Per-diem rates per city (valid from 1 March 2025)",
            }),
            ("p", "On the day of departure and the day of return, half of the daily meal allowance is "
                  "paid. If a meal is provided free of charge, for example a hotel breakfast or a "
                  "customer dinner, the meal allowance is reduced by 20 percent for breakfast and by 40 "
                  "percent each for lunch and dinner. No per-diem is paid for trips within the city of "
                  "your home office."),
            ("h2", "4.4 Submitting Expenses"),
            ("p", "Submit all travel and business expenses in ExpensePoint, our expense tool, within 30 "
                  "calendar days after the end of the trip, or after the date of the expense for costs "
                  "that are not related to travel. Upload a photo or scan of every receipt; the tool "
                  "rejects items over 15 EUR without a receipt. Your line manager approves the claim, "
                  "and Finance checks it against this policy."),
            ("p", "Approved expenses are reimbursed with the next monthly payroll. Claims submitted after "
                  "the 30-day deadline are only reimbursed in exceptional cases with a written "
                  "justification; claims that are more than 90 days old are not reimbursed."),
        ],
    ),
    (
        "5. Code of Conduct",
        [
            ("p", "Our reputation depends on how each of us behaves towards customers, suppliers and each "
                  "other. This Code of Conduct summarises the most important rules. It applies to all "
                  "employees, interns and temporary staff, and managers are expected to set an example."),
            ("h2", "5.1 Respect and Fair Treatment"),
            ("p", "We treat everyone with respect, regardless of gender, age, origin, religion, "
                  "disability, sexual orientation or any other personal characteristic. Discrimination, "
                  "bullying and sexual harassment are not tolerated and lead to disciplinary action up to "
                  "dismissal. If you experience or observe such behaviour, talk to your line manager or "
                  "to People &amp; Culture, or use the Lattice SpeakUp channel described in section 5.4."),
            ("h2", "5.2 Gifts and Hospitality"),
            ("p", "You may accept or give occasional gifts with a value of up to 50 EUR per business "
                  "partner per calendar year. Gifts above this value must be declined or reported to the "
                  f"Compliance Officer, Dr. Katrin Vogt, at compliance@{DOMAIN}, who decides whether they "
                  "may be kept. Cash and cash equivalents such as vouchers are never accepted, regardless "
                  "of the amount. Invitations to events that include travel or overnight stays always "
                  "require prior approval from the Compliance Officer."),
            ("h2", "5.3 Conflicts of Interest"),
            ("p", "Avoid situations in which your personal interests could conflict with those of the "
                  "company. Secondary employment, board positions and financial interests in customers, "
                  "suppliers or competitors must be disclosed to People &amp; Culture in writing and "
                  "require approval before you start."),
            ("h2", "5.4 Speaking Up"),
            ("p", "If you suspect a violation of the law or of this Code, you can report it through "
                  "Lattice SpeakUp, our whistleblowing portal, which is run by an external provider and "
                  "can be used anonymously. You receive a confirmation within 7 days and feedback on the "
                  "follow-up within three months. Retaliation against anyone who reports a concern in "
                  "good faith is strictly prohibited."),
        ],
    ),
    (
        "6. Health and Safety",
        [
            ("p", "Everyone is responsible for a safe workplace. Our Health and Safety Officer, Ingo "
                  "Paulsen, coordinates risk assessments, safety training and first aid in both offices."),
            ("h2", "6.1 Production and Laboratory Areas"),
            ("p", "Access to the assembly hall and the calibration laboratory in Hamburg requires a safety "
                  "briefing, which is repeated every year. In these areas, safety shoes (class S3) and "
                  "safety glasses are mandatory; the company provides them free of charge. The clean room "
                  "may only be entered with the protective clothing provided at the airlock."),
            ("h2", "6.2 Emergencies and First Aid"),
            ("p", "In an emergency, call 112 first and then inform reception. First aiders are trained "
                  "every two years; the current list hangs next to every kitchen. In case of fire, leave the building by the "
                  "nearest marked exit and go to the assembly point: in Hamburg, the promenade in front "
                  "of the main entrance; in Lisbon, the square on the opposite side of Rua do "
                  "A\u00e7\u00facar. Evacuation drills are held twice a year in each office."),
            ("h2", "6.3 Accidents and Ergonomics"),
            ("p", "Report every work accident, including minor injuries and near misses, to the Health "
                  "and Safety Officer within 24 hours. Employees who work at a screen are entitled to an "
                  "ergonomic workstation assessment, including a height-adjustable desk where needed; "
                  "request the assessment in Lattice People."),
        ],
    ),
    (
        "7. Confidentiality and Data Protection",
        [
            ("p", "Confidential information about customers, products and colleagues may only be used "
                  "for business purposes, also after you leave the company."),
            ("p", "We classify information into four levels: Public, Internal, Confidential and Strictly "
                  "Confidential. Unless marked otherwise, documents are Internal. Customer measurement "
                  "data, unreleased product designs and personnel data are always Confidential or "
                  "higher. Keep your desk clear of confidential documents when you leave it, and dispose "
                  "of them in the locked shredding bins."),
            ("p", "Personal data of customers and colleagues is protected under the EU General Data "
                  "Protection Regulation. Our Data Protection Officer, Lena Hoffmann, can be reached at "
                  f"privacy@{DOMAIN}. Rules for passwords, VPN, laptops and reporting security incidents "
                  "are set out in the IT Security Guidelines."),
        ],
    ),
    (
        "8. Probation and Leaving the Company",
        [
            ("p", "The first six months of employment are a probation period. During probation, either "
                  "side can terminate the contract with two weeks' notice. After probation, the notice "
                  "periods in your employment contract and local law apply. Your line manager holds a "
                  "probation review with you in your fifth month."),
            ("p", "When you leave, you hand back your laptop, badge, corporate credit card and any other "
                  "company property on your last working day. People "
                  "&amp; Culture invites every leaver to a voluntary exit interview, and you receive "
                  "your employment reference within two weeks after your last day."),
        ],
    ),
    (
        "9. Contacts",
        [
            ("pk", "For questions about this handbook, contact the teams listed below. Extensions can be "
                  "dialled from both offices; from outside, use +49 40 5550 followed by the extension. "
                  "IT support contacts are listed in the IT Security Guidelines."),
            ("table", {
                "header": ["Topic", "Contact", "Email", "Ext."],
                "rows": [
                    ["Handbook, leave, working time", "People & Culture (Marta Quintela)",
                     f"people@{DOMAIN}", "2300"],
                    ["Travel bookings, TripDesk", "Travel Desk", f"travel@{DOMAIN}", "2350"],
                    ["Expense claims, ExpensePoint", "Finance, Accounts Payable",
                     f"expenses@{DOMAIN}", "2360"],
                    ["Gifts, conflicts of interest", "Compliance (Dr. Katrin Vogt)",
                     f"compliance@{DOMAIN}", "2380"],
                    ["Health and safety", "Ingo Paulsen", f"safety@{DOMAIN}", "2390"],
                    ["Data protection", "Lena Hoffmann", f"privacy@{DOMAIN}", "2395"],
                ],
                "widths": [42, 45, 65, 14],
                "align_right_from": 3,
                "font_size": 8.5,
                "wrap": True,
            }),
        ],
    ),
]


# ---------------------------------------------------------------------------
# PDF generation
# ---------------------------------------------------------------------------

def build_pdf(path: Path) -> None:
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_CENTER
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import (
        BaseDocTemplate,
        Frame,
        PageBreak,
        PageTemplate,
        Paragraph,
        Spacer,
    )
    from reportlab.platypus.tableofcontents import TableOfContents

    base = getSampleStyleSheet()
    body = ParagraphStyle("Body", parent=base["BodyText"], fontName="Helvetica", fontSize=10.5,
                          leading=14.5, spaceAfter=7)
    h1 = ParagraphStyle("H1", parent=base["Heading1"], fontName="Helvetica-Bold", fontSize=17,
                        leading=21, spaceBefore=14, spaceAfter=8, keepWithNext=1,
                        textColor=colors.HexColor("#12355b"))
    h2 = ParagraphStyle("H2", parent=base["Heading2"], fontName="Helvetica-Bold", fontSize=12.5,
                        leading=16, spaceBefore=9, spaceAfter=4, keepWithNext=1,
                        textColor=colors.HexColor("#1f5f8b"))
    title = ParagraphStyle("CoverTitle", parent=base["Title"], fontName="Helvetica-Bold",
                           fontSize=30, leading=36, alignment=TA_CENTER,
                           textColor=colors.HexColor("#12355b"), spaceAfter=10)
    subtitle = ParagraphStyle("CoverSub", parent=body, fontSize=13, leading=18, alignment=TA_CENTER)
    caption = ParagraphStyle("Caption", parent=body, fontName="Helvetica-Oblique", fontSize=9,
                             leading=12, spaceBefore=3, spaceAfter=9)
    body_keep = ParagraphStyle("BodyKeep", parent=body, keepWithNext=1)
    cell = ParagraphStyle("Cell", parent=body, fontSize=8.5, leading=10.5, spaceAfter=0)
    toc_h = ParagraphStyle("TOCHeading", parent=h2, fontSize=14, spaceBefore=18, leftIndent=20 * mm)

    class HandbookDoc(BaseDocTemplate):
        def __init__(self, filename: str, **kw):
            super().__init__(filename, **kw)
            frame = Frame(self.leftMargin, self.bottomMargin, self.width, self.height, id="body")
            self.addPageTemplates([
                PageTemplate(id="cover", frames=[frame], onPage=self._cover_page),
                PageTemplate(id="content", frames=[frame], onPage=self._content_page),
            ])
            self._seq = 0

        @staticmethod
        def _cover_page(canv, doc):
            canv.showOutline()  # open the bookmarks panel by default in PDF viewers
            canv.saveState()
            canv.setFillColor(colors.HexColor("#12355b"))
            canv.rect(0, A4[1] - 18 * mm, A4[0], 18 * mm, stroke=0, fill=1)
            canv.setFont("Helvetica", 8)
            canv.setFillColor(colors.grey)
            canv.drawCentredString(A4[0] / 2, 12 * mm, "Classification: Internal")
            canv.restoreState()

        @staticmethod
        def _content_page(canv, doc):
            canv.saveState()
            canv.setFont("Helvetica", 8)
            canv.setFillColor(colors.grey)
            canv.drawString(doc.leftMargin, A4[1] - 13 * mm,
                            "Northwind Lattice GmbH \u2013 Employee Handbook, Version 4.2")
            canv.drawRightString(A4[0] - doc.rightMargin, 12 * mm, f"Page {doc.page}")
            canv.drawString(doc.leftMargin, 12 * mm, "Classification: Internal")
            canv.setStrokeColor(colors.lightgrey)
            canv.line(doc.leftMargin, A4[1] - 15 * mm, A4[0] - doc.rightMargin, A4[1] - 15 * mm)
            canv.restoreState()

        def afterFlowable(self, flowable):
            level = getattr(flowable, "_outline_level", None)
            if level is None:
                return
            text = flowable.getPlainText()
            self._seq += 1
            key = f"sec{self._seq}"
            self.canv.bookmarkPage(key)
            self.canv.addOutlineEntry(text, key, level=level, closed=False)
            if level == 0:  # the printed contents list shows the numbered sections only
                self.notify("TOCEntry", (level, text, self.page, key))

        def beforeDocument(self):
            self._seq = 0

    def heading(text: str, style, level: int) -> Paragraph:
        para = Paragraph(text, style)
        para._outline_level = level
        return para

    def make_table(spec: dict):
        return _make_table(spec, cell, caption)

    story = [
        Spacer(1, 38 * mm),
        Paragraph("Northwind Lattice GmbH", subtitle),
        Spacer(1, 6 * mm),
        Paragraph("Employee Handbook", title),
        Paragraph("Version 4.2 \u2013 effective 1 March 2025", subtitle),
        Spacer(1, 8 * mm),
        Paragraph("Applies to all employees in Hamburg and Lisbon. Owner: People &amp; Culture. "
                  "This version replaces version 4.1 of 1 September 2023.", subtitle),
        Spacer(1, 10 * mm),
        Paragraph("Contents", toc_h),
        Spacer(1, 3 * mm),
    ]
    toc = TableOfContents()
    toc.levelStyles = [
        ParagraphStyle("TOC1", parent=body, fontName="Helvetica", fontSize=11, leading=15,
                       leftIndent=20 * mm, firstLineIndent=0, spaceAfter=2),
    ]
    toc.dotsMinLevel = -1  # no dot leaders: keeps the text layer clean
    story.append(toc)
    story.append(PageBreak("content"))

    for sec_title, blocks in HANDBOOK:
        story.append(heading(sec_title, h1, 0))
        for kind, payload in blocks:
            _add_block(story, kind, payload, body=body, body_keep=body_keep, h2=h2, heading=heading,
                       make_table=make_table)

    path.parent.mkdir(parents=True, exist_ok=True)
    doc = HandbookDoc(
        str(path),
        pagesize=A4,
        leftMargin=22 * mm,
        rightMargin=22 * mm,
        topMargin=22 * mm,
        bottomMargin=20 * mm,
        title="Northwind Lattice GmbH \u2013 Employee Handbook",
        author="Northwind Lattice GmbH, People & Culture",
        subject="Employee handbook, version 4.2, effective 1 March 2025",
        keywords="handbook, working hours, vacation, travel, expenses, code of conduct",
        creator="scripts/make_sample_docs.py",
        invariant=1,
        pageCompression=1,
    )
    doc.multiBuild(story)


def _make_table(spec: dict, cell, caption) -> list:
    """A HANDBOOK table (header row, zebra rows, optional caption) and what follows it."""
    from reportlab.lib import colors
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, Spacer, Table, TableStyle
    from xml.sax.saxutils import escape

    size = spec.get("font_size", 10)
    wrap = spec.get("wrap", False)
    header = spec["header"]
    rows = spec["rows"]
    data = [header] + rows
    if wrap:
        data = [[Paragraph(escape(c), cell) for c in r] for r in data]
    widths = [w * mm for w in spec["widths"]]
    tbl = Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    style = [
        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("FONTNAME", (0, 1), (-1, -1), "Helvetica"),
        ("FONTSIZE", (0, 0), (-1, -1), size),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dce8f2")),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f4f7fa")]),
        ("GRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#8aa4bd")),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
    ]
    start = spec.get("align_right_from")
    if start is not None and not wrap:
        style.append(("ALIGN", (start, 0), (-1, -1), "RIGHT"))
    tbl.setStyle(TableStyle(style))
    parts = [tbl]
    if spec.get("caption"):
        parts.append(Paragraph(spec["caption"], caption))
    else:
        parts.append(Spacer(1, 8))
    return parts


def _add_block(story: list, kind: str, payload, *, body, body_keep, h2, heading, make_table) -> None:
    """Append one HANDBOOK block (paragraph, heading, bullet list or table) to the story."""
    from reportlab.platypus import KeepTogether, ListFlowable, ListItem, Paragraph

    if kind == "p":
        story.append(Paragraph(payload, body))
    elif kind == "pk":
        story.append(Paragraph(payload, body_keep))
    elif kind == "h2":
        story.append(heading(payload, h2, 1))
    elif kind == "bullets":
        story.append(ListFlowable(
            [ListItem(Paragraph(t, body), leftIndent=14) for t in payload],
            bulletType="bullet", start="\u2022", leftIndent=14, bulletFontSize=9,
        ))
    elif kind == "table":
        # Keep the table on one page together with the heading and the
        # introductory paragraph(s) marked keepWithNext right before it.
        group = []
        while isinstance(story[-1], Paragraph) and story[-1].getKeepWithNext():
            group.insert(0, story.pop())
        story.append(KeepTogether(group + make_table(payload)))
    else:  # pragma: no cover
        raise ValueError(kind)


# ---------------------------------------------------------------------------
# DOCX generation
# ---------------------------------------------------------------------------

BENEFITS_SUMMARY = [
    ("Benefit", "Hamburg", "Lisbon", "Eligible from"),
    ("Health insurance", "Statutory insurance plus HanseVital dental and vision plan (100% company-paid)",
     "Atl\u00e2ntico Sa\u00fade private plan (100% employee, 50% family members)", "First day"),
    ("Pension", "Company pension: 1:1 match up to 4% of gross base salary",
     "Pension plan: 3% of base salary paid by the company", "Hamburg: first day; Lisbon: after probation"),
    ("Bike leasing", "Up to 2 bikes, max. 8,000 EUR each, 36 months", "Not available", "After probation"),
    ("Meal vouchers", "7.50 EUR per working day, max. 15 per month", "Meal card 10.20 EUR per working day",
     "First day"),
    ("Public transport", "30 EUR per month towards the Deutschlandticket",
     "Navegante monthly pass reimbursed in full", "First day"),
    ("Learning budget", "1,000 EUR per calendar year", "1,000 EUR per calendar year", "First day"),
]


def build_docx(path: Path) -> None:
    import docx
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    from docx.shared import Pt

    d = docx.Document()
    normal = d.styles["Normal"]
    normal.font.name = "Calibri"
    normal.font.size = Pt(11)

    def para(text: str):
        return d.add_paragraph(text)

    def bullets(items):
        for it in items:
            d.add_paragraph(it, style="List Bullet")

    d.add_heading("Northwind Lattice GmbH \u2013 Benefits Overview 2025", level=0)
    p = para("Valid from 1 January 2025 for all employees in Hamburg and Lisbon. Maintained by People "
             "& Culture. Questions about benefits go to Jana Petersen, Benefits Specialist, at "
             f"benefits@{DOMAIN}.")
    p.runs[0].italic = True

    d.add_heading("1. Introduction", level=1)
    para("Our benefits are designed to keep you healthy, to help you save for the future and to make "
         "everyday life a little easier. Some benefits differ between Germany and Portugal because tax "
         "and social security rules differ; where that is the case, both variants are described. "
         "Unless stated otherwise, part-time employees receive the same benefits as full-time "
         "employees.")
    para("You enrol in, change or cancel benefits in the Lattice People portal under Benefits. Changes "
         "take effect on the first day of the following month. Benefits that are linked to salary "
         "conversion are shown on your monthly payslip.")

    d.add_heading("2. Health and Wellbeing", level=1)
    d.add_heading("2.1 Health Insurance in Germany", level=2)
    para("Employees in Hamburg are insured through the German statutory health insurance system; the "
         "employer pays its legal share of the contribution. In addition, Northwind Lattice provides a "
         "supplementary dental and vision insurance with HanseVital. The company pays 100% of the "
         "premium, and the cover starts on your first working day without a health questionnaire.")
    bullets([
        "Professional dental cleaning: up to 2 treatments per year fully covered.",
        "Dental fillings, crowns and implants: 80% of the costs not covered by the statutory insurer.",
        "Glasses and contact lenses: up to 300 EUR every two calendar years.",
        "Family members can be added at the employee's own expense at the group rate.",
    ])
    d.add_heading("2.2 Health Insurance in Portugal", level=2)
    para("Employees in Lisbon are covered by the private health plan Atl\u00e2ntico Sa\u00fade in "
         "addition to the national health service (SNS). The company pays 100% of the premium for the "
         "employee and 50% for a spouse or partner and children up to the age of 25. The plan includes "
         "hospital care, specialist consultations, diagnostics and dental care, with a co-payment of "
         "10 EUR per consultation in the network.")
    d.add_heading("2.3 Wellbeing", level=2)
    para("All employees can join the FitNet sports network, which gives access to gyms, swimming pools "
         "and online classes in Hamburg, Lisbon and many other cities. The company pays 30 EUR per "
         "month towards the membership. Our Employee Assistance Programme offers free and confidential "
         "counselling by phone or video in English, German and Portuguese, 24 hours a day, for work and "
         "personal topics.")

    d.add_heading("3. Pension", level=1)
    d.add_heading("3.1 Company Pension in Germany", level=2)
    para("Employees in Hamburg can convert part of their gross salary into a company pension "
         "(betriebliche Altersversorgung) with our pension provider. Northwind Lattice matches your own "
         "contribution one to one, up to 4% of your gross base salary. Example: if you earn 60,000 EUR "
         "per year and convert 2,400 EUR, the company adds another 2,400 EUR. You can join from your "
         "first day, and the company contribution vests immediately.")
    d.add_heading("3.2 Pension Plan in Portugal", level=2)
    para("After the probation period, employees in Lisbon are enrolled in a company-funded pension plan "
         "(plano de pens\u00f5es). The company contributes 3% of your base salary; you may add voluntary "
         "contributions of your own. Contributions vest after three years of service.")

    d.add_heading("4. Mobility", level=1)
    d.add_heading("4.1 Bike Leasing", level=2)
    para("Employees in Hamburg can lease up to two bicycles or e-bikes through salary conversion once "
         "they have completed their probation period. Each bike may have a retail price of up to 8,000 "
         "EUR including accessories. The lease runs for 36 months; the company pays the insurance and "
         "service package of up to 25 EUR per bike and month. At the end of the lease, you can usually "
         "buy the bike for a residual value. Order your bike through Lattice People under Benefits, "
         "Bike Leasing. Bike leasing is not available in Portugal.")
    d.add_heading("4.2 Public Transport", level=2)
    para("In Hamburg, the company pays 30 EUR per month towards a Deutschlandticket ordered as a job "
         "ticket through Lattice People. In Lisbon, the company reimburses the Navegante Metropolitano "
         "monthly pass in full; submit the receipt in ExpensePoint once per month.")

    d.add_heading("5. Meals", level=1)
    d.add_heading("5.1 Meal Vouchers in Hamburg", level=2)
    para("Employees in Hamburg receive digital meal vouchers worth 7.50 EUR per working day, up to 15 "
         "vouchers per month. Upload your restaurant or supermarket receipt in the MealMate app on "
         "the day of the meal, and the amount is paid out tax-free with your salary. Vouchers are "
         "only granted on days on which you work; they are not granted on vacation or sick days.")
    d.add_heading("5.2 Meal Allowance in Lisbon", level=2)
    para("Employees in Lisbon receive a meal allowance (subs\u00eddio de refei\u00e7\u00e3o) of 10.20 "
         "EUR per working day, loaded monthly onto a meal card that can be used in restaurants and "
         "supermarkets. The amount for a month is calculated from the working days of the previous "
         "month.")

    d.add_heading("6. Learning and Development", level=1)
    para("Every employee has a personal learning budget of 1,000 EUR per calendar year for courses, "
         "conferences, certifications and books. Unused budget does not carry over. Agree on the use "
         "of the budget with your line manager and book through Lattice People; for conference "
         "travel, the travel rules in the Employee Handbook apply. Language courses in German and "
         "Portuguese are offered in both offices free of charge and do not count towards the budget.")

    d.add_heading("7. Summary Table", level=1)
    para("The table below summarises the main benefits by location.")
    table = d.add_table(rows=0, cols=4)
    table.style = "Table Grid"
    for i, row in enumerate(BENEFITS_SUMMARY):
        cells = table.add_row().cells
        for c, text in zip(cells, row, strict=True):
            c.text = text
            if i == 0:
                for r in c.paragraphs[0].runs:
                    r.bold = True
    para("")
    last = para("This overview is for information only. The binding terms are set out in the "
                "respective insurance policies, pension plan rules and works agreements.")
    last.alignment = WD_ALIGN_PARAGRAPH.LEFT
    last.runs[0].italic = True

    fixed = dt.datetime(2025, 1, 1, 9, 0, 0, tzinfo=dt.UTC)
    cp = d.core_properties
    cp.title = "Benefits Overview 2025"
    cp.author = "Northwind Lattice GmbH, People & Culture"
    cp.last_modified_by = "Northwind Lattice GmbH, People & Culture"
    cp.subject = "Employee benefits in Hamburg and Lisbon"
    cp.keywords = "benefits, health insurance, pension, bike leasing, meal vouchers"
    cp.created = fixed
    cp.modified = fixed
    cp.revision = 1

    buf = io.BytesIO()
    d.save(buf)
    _write_normalized_zip(buf.getvalue(), path)


def _write_normalized_zip(data: bytes, path: Path) -> None:
    """Rewrite a ZIP with fixed timestamps so the output is byte-for-byte reproducible."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            zi = zipfile.ZipInfo(info.filename, date_time=(2025, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            dst.writestr(zi, src.read(info.filename))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())


# ---------------------------------------------------------------------------
# Verification (pypdfium2)
# ---------------------------------------------------------------------------

def verify_pdf(path: Path) -> int:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    texts = []
    for i in range(len(pdf)):
        page = pdf[i]
        tp = page.get_textpage()
        texts.append(tp.get_text_range())
        tp.close()
        page.close()
    problems = _check_pages(texts) + _check_outline(pdf, texts) + _check_per_diem_table(texts)
    for p in problems:
        print("PROBLEM:", p)
    pdf.close()
    return 1 if problems else 0


def _check_pages(texts: list[str]) -> list[str]:
    problems = []
    print(f"pages: {len(texts)}")
    if len(texts) < 5:
        problems.append("fewer than 5 pages")
    for i, t in enumerate(texts):
        n = len(t.split())
        print(f"  page {i + 1}: {n} words")
        if n < 20:
            problems.append(f"page {i + 1} has almost no text")
    return problems


def _check_outline(pdf, texts: list[str]) -> list[str]:
    problems = []
    toc = list(pdf.get_toc())
    print("outline:")
    expected = [title for title, _ in HANDBOOK]
    found = {}
    for item in toc:
        title = item.get_title()
        dest = item.get_dest()
        idx = dest.get_index() if dest is not None else None
        print(f"  {'  ' * item.level}{title} -> page {idx + 1 if idx is not None else None}")
        found[title] = idx
        if idx is None:
            problems.append(f"outline entry without destination: {title}")
            continue
        first_line = title.split(". ", 1)[-1] if item.level == 0 else title
        norm = " ".join(texts[idx].split())
        if title not in norm and first_line not in norm:
            problems.append(f"outline entry {title!r} points to page {idx + 1}, heading not found there")
    for title in expected:
        if title not in found:
            problems.append(f"missing outline entry {title}")
    return problems


def _check_per_diem_table(texts: list[str]) -> list[str]:
    table_pages = []
    for i, t in enumerate(texts):
        lines = [" ".join(line.split()) for line in t.splitlines()]
        hits = [r for r in PER_DIEM_ROWS if " ".join(r) in lines]
        if hits:
            table_pages.append((i + 1, len(hits)))
    print(f"per-diem table rows found as lines: {table_pages}")
    if sum(n for _, n in table_pages) != len(PER_DIEM_ROWS):
        return ["not all per-diem rows extracted as single lines"]
    return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verify", action="store_true", help="check the PDF with pypdfium2 afterwards")
    args = ap.parse_args(argv)
    build_pdf(PDF_PATH)
    build_docx(DOCX_PATH)
    for p in (PDF_PATH, DOCX_PATH):
        print(f"wrote {p.relative_to(ROOT)} ({p.stat().st_size} bytes)")
    if args.verify:
        return verify_pdf(PDF_PATH)
    return 0


if __name__ == "__main__":
    sys.exit(main())
