"""Vocabularies of the synthetic database generator (:mod:`tributary_core.datasets.synth`).

A *theme* (retail, healthcare, ...) names the tables a database may have and their columns, so
that column names, descriptions and categorical values read like a real database's and their
text embeddings carry meaning. The causal model decides the values; this module only names
things.

An attribute is written ``"name code args | description"``:

- ``n SHAPE ...``: numerical; shapes ``money MEDIAN`` (log-normal, cents), ``pos MEDIAN``
  (log-normal), ``count MEAN`` (Poisson), ``int LO HI`` and ``score LO HI`` (bounded, integer
  or one decimal), ``real MEAN SD`` (normal), ``rate`` (between 0 and 1);
- ``c VOCAB``: categorical, values from :data:`CATEGORIES` (ordered lists keep their order);
- ``b``: boolean;
- ``t VOCAB``: text, a short phrase from :data:`TEXTS` (a modifier ordered from low to high,
  then a noun);
- ``d past YEARS`` / ``d future DAYS``: a timestamp before the row's time (a birth date) or
  after it (a due date), always known when the row is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Attr", "Dim", "Entity", "Event", "Detail", "Link", "Theme", "THEMES", "CATEGORIES",
           "TEXTS", "GENERIC", "parse_attr"]


@dataclass(frozen=True)
class Attr:
    name: str
    code: str  # n, c, b, t, d
    args: tuple[str, ...]
    description: str


def parse_attr(spec: str) -> Attr:
    head, _, description = spec.partition("|")
    name, code, *args = head.split()
    return Attr(name, code, tuple(args), description.strip())


def _attrs(*specs: str) -> tuple[Attr, ...]:
    return tuple(parse_attr(s) for s in specs)


@dataclass(frozen=True)
class Dim:
    """An untimed lookup table: one row per value of a vocabulary."""

    table: str
    key: str
    label: str  # the categorical column holding the value's name
    vocab: str
    singular: str
    description: str
    attrs: tuple[Attr, ...] = ()


@dataclass(frozen=True)
class Entity:
    table: str
    key: str
    singular: str
    description: str
    created: str | None  # its creation-time column; None: never timed
    created_description: str
    attrs: tuple[Attr, ...]
    dims: tuple[str, ...] = ()  # dimension tables it may reference
    parents: tuple[str, ...] = ()  # entity tables it may reference (generated before it)
    self_ref: tuple[str, str] | None = None  # (column, description)


@dataclass(frozen=True)
class Event:
    table: str
    key: str
    singular: str
    description: str
    time: str
    time_description: str
    actors: tuple[str, ...]  # entity tables, one of which produces the events
    attrs: tuple[Attr, ...]
    objects: tuple[str, ...] = ()  # entity or dimension tables an event may also reference


@dataclass(frozen=True)
class Detail:
    """Rows under an event (order lines), timed through it (``temporal_from``)."""

    table: str
    key: str
    singular: str
    description: str
    parent: str  # the event table
    attrs: tuple[Attr, ...]
    objects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Link:
    """A many-to-many table between two entities, with no primary key."""

    table: str
    left: str
    right: str
    time: str
    description: str
    attrs: tuple[Attr, ...] = ()


@dataclass(frozen=True)
class Theme:
    name: str
    dims: tuple[Dim, ...]
    entities: tuple[Entity, ...]
    events: tuple[Event, ...]
    details: tuple[Detail, ...] = ()
    links: tuple[Link, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)


#: Categorical vocabularies; where the order means something it runs from low to high.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "tier": ("bronze", "silver", "gold", "platinum"),
    "priority": ("low", "medium", "high", "urgent"),
    "risk": ("low", "moderate", "elevated", "high"),
    "severity": ("mild", "moderate", "severe", "critical"),
    "intensity": ("recovery", "light", "moderate", "hard", "maximal"),
    "size": ("XS", "S", "M", "L", "XL", "XXL"),
    "seniority": ("junior", "associate", "senior", "principal", "head"),
    "grade": ("F", "D", "C", "B", "A"),
    "course_level": ("introductory", "intermediate", "advanced", "graduate"),
    "academic_rank": ("lecturer", "assistant professor", "associate professor", "professor"),
    "service_level": ("economy", "standard", "express", "same day"),
    "stream_quality": ("SD", "HD", "full HD", "4K"),
    "maturity": ("all ages", "7+", "13+", "16+", "18+"),
    "plan": ("free", "basic", "standard", "premium", "family"),
    "supplier_tier": ("approved", "preferred", "strategic"),
    "color": ("red", "blue", "green", "black", "white", "grey", "yellow", "orange", "purple"),
    "channel": ("online", "in store", "phone", "mobile app", "marketplace"),
    "payment": ("credit card", "debit card", "cash", "paypal", "gift card", "bank transfer"),
    "order_status": ("pending", "shipped", "delivered", "cancelled", "returned"),
    "return_reason": ("wrong size", "damaged", "not as described", "changed mind", "late delivery",
                      "defective"),
    "store_format": ("hypermarket", "supermarket", "convenience", "outlet", "flagship"),
    "region": ("north", "south", "east", "west", "central", "northeast", "southwest", "pacific",
               "mountain", "coastal"),
    "product_category": ("electronics", "garden", "toys", "apparel", "grocery", "books", "sports",
                         "beauty", "home", "automotive", "pets", "office"),
    "brand": ("acme", "globex", "initech", "umbrella", "hooli", "vandelay", "soylent", "tyrell",
              "wonka", "stark"),
    "city": ("springfield", "riverton", "lakeside", "fairview", "greenville", "oakdale",
             "maple falls", "harbor city", "brookfield", "westport", "eastwood", "hillcrest"),
    "country": ("united states", "canada", "mexico", "brazil", "united kingdom", "france",
                "germany", "spain", "italy", "japan", "india", "australia"),
    "language": ("english", "spanish", "french", "german", "japanese", "portuguese", "hindi"),
    "department": ("cardiology", "oncology", "pediatrics", "neurology", "orthopedics",
                   "emergency", "dermatology", "psychiatry", "radiology"),
    "insurer": ("northstar health", "unity mutual", "civic care", "blue harbor", "evergreen life",
                "pioneer assurance", "public plan"),
    "blood_type": ("O+", "O-", "A+", "A-", "B+", "B-", "AB+", "AB-"),
    "sex": ("female", "male"),
    "clinic_type": ("general practice", "urgent care", "specialist", "community", "rehabilitation"),
    "diagnosis": ("respiratory", "cardiac", "infection", "injury", "metabolic", "neurological",
                  "digestive", "mental health", "skin"),
    "drug_class": ("antibiotic", "analgesic", "antihypertensive", "statin", "antidepressant",
                   "antihistamine", "insulin", "anticoagulant"),
    "lab_test": ("blood count", "glucose", "cholesterol", "liver panel", "thyroid", "urinalysis",
                 "vitamin d"),
    "ward": ("general", "intensive care", "maternity", "surgical", "geriatric", "pediatric"),
    "procedure": ("x-ray", "blood draw", "ecg", "vaccination", "suture", "ultrasound",
                  "physiotherapy", "mri"),
    "faculty": ("science", "arts", "engineering", "business", "medicine", "law", "education"),
    "campus": ("north campus", "city campus", "riverside campus", "online campus", "east campus"),
    "major": ("mathematics", "biology", "history", "computer science", "economics", "literature",
              "physics", "art", "psychology", "chemistry"),
    "device": ("mobile", "desktop", "tablet", "smart tv", "console"),
    "subject": ("fiction", "history", "science", "mathematics", "philosophy", "art", "law",
                "computing"),
    "league": ("premier division", "first division", "second division", "regional league",
               "youth league"),
    "venue": ("city stadium", "riverside park", "north arena", "harbor ground", "memorial field",
              "valley dome", "lakeside court"),
    "position": ("goalkeeper", "defender", "midfielder", "forward", "winger"),
    "foot": ("right", "left", "both"),
    "coaching_style": ("defensive", "possession", "counter attack", "high press", "balanced"),
    "result": ("loss", "draw", "win"),
    "weather": ("sunny", "cloudy", "rainy", "windy", "snowy", "foggy"),
    "body_part": ("ankle", "knee", "hamstring", "shoulder", "back", "wrist", "head"),
    "vehicle": ("cargo bike", "van", "light truck", "heavy truck", "refrigerated truck"),
    "shift": ("early", "day", "late", "night"),
    "license": ("B", "C1", "C", "CE"),
    "fuel": ("diesel", "petrol", "electric", "hybrid", "lpg"),
    "segment": ("consumer", "small business", "mid market", "enterprise", "government"),
    "industry": ("manufacturing", "retail", "healthcare", "construction", "food", "technology",
                 "pharmaceuticals"),
    "shipment_status": ("delivered", "in transit", "delayed", "returned", "lost"),
    "maintenance": ("oil change", "tyres", "brakes", "inspection", "engine repair", "bodywork"),
    "incident": ("scratch", "collision", "breakdown", "theft", "flat tyre", "speeding ticket"),
    "account_type": ("checking", "savings", "credit card", "brokerage", "mortgage"),
    "employment": ("student", "employed", "self employed", "unemployed", "retired"),
    "bank_segment": ("mass market", "affluent", "private", "business"),
    "currency": ("usd", "eur", "gbp", "jpy", "cad"),
    "merchant_category": ("groceries", "travel", "dining", "utilities", "entertainment", "fuel",
                          "health", "electronics", "clothing"),
    "pay_channel": ("card present", "online", "contactless", "atm", "wire"),
    "transaction_type": ("purchase", "transfer", "withdrawal", "deposit", "refund", "fee"),
    "loan_purpose": ("home", "car", "education", "business", "debt consolidation", "holiday"),
    "call_topic": ("card blocked", "fees", "fraud report", "loan question", "address change",
                   "online banking", "complaint"),
    "genre": ("drama", "comedy", "documentary", "thriller", "animation", "science fiction",
              "romance", "horror", "crime"),
    "studio": ("silver screen", "northlight", "blue river pictures", "paper moon", "red lantern",
               "open sky", "iron gate"),
}

#: Text vocabularies: (modifiers from low to high, nouns).
_SENTIMENT = ("terrible", "poor", "disappointing", "mediocre", "okay", "decent", "good", "great",
              "excellent", "outstanding")
_INTENSITY = ("no", "slight", "mild", "moderate", "marked", "severe", "acute")
_FREQUENCY = ("never", "rarely", "occasionally", "sometimes", "often", "usually", "always")
TEXTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "review": (_SENTIMENT, ("quality", "delivery", "price", "packaging", "service", "fit",
                            "battery life", "design", "value", "instructions")),
    "shopper": (_FREQUENCY, ("buys on sale", "shops online", "compares prices", "buys gifts",
                             "returns items", "shops with family", "tries new brands")),
    "product": (("basic", "classic", "compact", "deluxe", "premium", "professional"),
                ("cotton shirt", "wireless speaker", "garden hose", "desk lamp", "running shoes",
                 "coffee maker", "backpack", "board game", "face cream", "phone case")),
    "history": (_INTENSITY, ("asthma", "hypertension", "diabetes", "back pain", "allergies",
                             "migraine", "anxiety", "arthritis")),
    "symptom": (_INTENSITY, ("headache", "chest pain", "cough", "fever", "fatigue", "nausea",
                             "dizziness", "rash", "joint pain", "shortness of breath")),
    "motivation": (("curious about", "interested in", "keen on", "passionate about",
                    "determined to master"),
                   ("research", "teaching", "industry", "public service", "starting a company",
                    "travel", "the arts")),
    "course_title": (("introduction to", "foundations of", "topics in", "advanced",
                      "research seminar in"),
                     ("algebra", "genetics", "world history", "machine learning",
                      "microeconomics", "poetry", "quantum physics", "sculpture",
                      "organic chemistry")),
    "feedback": (_SENTIMENT, ("structure", "argument", "references", "presentation", "code",
                              "analysis", "conclusion")),
    "performance": (_SENTIMENT, ("passing", "finishing", "defending", "positioning",
                                 "work rate", "first touch")),
    "handling": (("no special", "careful", "fragile", "very fragile", "hazardous"),
                 ("handling", "stacking", "loading", "storage", "delivery")),
    "incident_text": (_INTENSITY, ("damage to bumper", "damage to mirror", "cargo damage",
                                   "engine trouble", "tyre damage", "delay")),
    "merchant": (("corner", "family", "city", "express", "grand", "global"),
                 ("grocer", "cafe", "pharmacy", "hardware", "bookshop", "airline", "hotel",
                  "garage", "cinema")),
    "memo": (("small", "regular", "monthly", "large", "one-off", "urgent"),
             ("rent", "groceries", "salary", "dinner", "tickets", "refund", "utilities",
              "savings")),
    "call_summary": (_SENTIMENT, ("resolution", "wait time", "advice", "follow-up",
                                  "explanation")),
    "synopsis": (("a quiet", "a funny", "a tense", "a dark", "an epic", "a heartbreaking"),
                 ("family story", "heist", "love story", "war drama", "space adventure",
                  "coming of age tale", "mystery", "biography")),
    "note": (("routine", "minor", "notable", "important", "critical"),
             ("update", "issue", "request", "complaint", "observation")),
}

#: Columns any table may gain, beside its theme's.
GENERIC = _attrs(
    "priority c priority | internal priority set by staff",
    "internal_score n score 0 100 | internal quality score",
    "flagged b | flagged for manual review",
    "notes t note | free-text notes by staff",
    "risk_level c risk | assessed risk level",
)


THEMES: tuple[Theme, ...] = (
    Theme(
        name="retail",
        dims=(
            Dim("regions", "region_id", "region_name", "region", "region", "sales regions",
                _attrs("tax_rate n rate | sales tax rate", "urban_share n rate | share of urban population")),
            Dim("categories", "category_id", "category_name", "product_category", "category",
                "product categories", _attrs("margin n rate | typical gross margin")),
            Dim("brands", "brand_id", "brand_name", "brand", "brand", "product brands",
                _attrs("premium b | a premium brand")),
        ),
        entities=(
            Entity("suppliers", "supplier_id", "supplier", "companies supplying products",
                   "onboarded_at", "when the supplier was onboarded",
                   _attrs("lead_time_days n count 7 | typical delivery lead time in days",
                          "reliability n rate | share of deliveries on time last year",
                          "contract_tier c supplier_tier | contract tier",
                          "certified b | quality certified",
                          "city c city | head office city"),
                   dims=("regions",)),
            Entity("customers", "customer_id", "customer", "people who buy from the shop",
                   "signup_at", "when the customer signed up",
                   _attrs("age n int 18 90 | age in years",
                          "income n money 55000 | yearly household income in dollars",
                          "loyalty_tier c tier | loyalty programme tier",
                          "preferred_channel c channel | channel the customer usually buys through",
                          "newsletter b | subscribed to the newsletter",
                          "household_size n count 2 | people in the household",
                          "city c city | home city",
                          "has_app b | installed the mobile app",
                          "shopping_style t shopper | how the customer describes their shopping",
                          "birth_date d past 40 | date of birth"),
                   dims=("regions",), self_ref=("referred_by", "customer who referred them")),
            Entity("products", "product_id", "product", "products in the catalogue",
                   "launched_at", "when the product was launched",
                   _attrs("price n money 30 | list price in dollars",
                          "weight_kg n pos 1.5 | shipping weight in kilograms",
                          "color c color | main color",
                          "size c size | size",
                          "in_stock b | currently in stock",
                          "product_name t product | product name",
                          "rating_avg n score 1 5 | average star rating at listing"),
                   dims=("categories", "brands"), parents=("suppliers",)),
            Entity("stores", "store_id", "store", "physical shops", "opened_at",
                   "when the store opened",
                   _attrs("floor_area n pos 1200 | floor area in square metres",
                          "store_format c store_format | store format",
                          "staff_count n count 15 | number of staff",
                          "open_sundays b | open on Sundays",
                          "city c city | city of the store"),
                   dims=("regions",)),
        ),
        events=(
            Event("orders", "order_id", "order", "orders placed by customers", "placed_at",
                  "when the order was placed", ("customers",),
                  _attrs("amount n money 45 | order total in dollars",
                         "item_count n count 3 | number of items",
                         "payment_method c payment | how it was paid",
                         "status c order_status | fulfilment status",
                         "gift_wrap b | gift wrapped",
                         "discount_pct n score 0 50 | discount applied in percent",
                         "express_shipping b | express shipping chosen"),
                  objects=("stores", "products")),
            Event("reviews", "review_id", "review", "product reviews", "written_at",
                  "when the review was written", ("customers",),
                  _attrs("stars n int 1 5 | star rating",
                         "comment t review | review text",
                         "verified_purchase b | verified purchase",
                         "helpful_votes n count 2 | helpful votes received"),
                  objects=("products",)),
            Event("returns", "return_id", "return", "items brought back", "returned_at",
                  "when the item was returned", ("customers", "stores"),
                  _attrs("refund_amount n money 30 | refunded amount in dollars",
                         "reason c return_reason | reason given",
                         "restocked b | put back on sale"),
                  objects=("products",)),
            Event("store_visits", "visit_id", "visit", "visits to a store", "visited_at",
                  "when the visit started", ("customers", "stores"),
                  _attrs("minutes_spent n pos 25 | minutes in the store",
                         "purchased b | made a purchase",
                         "basket_value n money 35 | value of the basket in dollars",
                         "party_size n count 1 | people in the party")),
            Event("deliveries", "delivery_id", "delivery", "deliveries from suppliers",
                  "delivered_at", "when the delivery arrived", ("suppliers",),
                  _attrs("units n count 200 | units delivered",
                         "on_time b | arrived on time",
                         "delivery_cost n money 900 | delivery cost in dollars",
                         "damaged_units n count 2 | units damaged in transit"),
                  objects=("stores",)),
        ),
        details=(
            Detail("order_items", "item_id", "order line", "lines of an order", "orders",
                   _attrs("quantity n count 2 | units bought",
                          "unit_price n money 20 | price per unit in dollars",
                          "promo b | bought on promotion"),
                   objects=("products",)),
        ),
        links=(
            Link("wishlist_items", "customers", "products", "added_at",
                 "products customers saved for later",
                 _attrs("wish_priority c priority | how much they want it")),
        ),
    ),
    Theme(
        name="healthcare",
        dims=(
            Dim("departments", "department_id", "department_name", "department", "department",
                "hospital departments",
                _attrs("beds n count 30 | beds in the department",
                       "teaching b | a teaching department")),
            Dim("insurers", "insurer_id", "insurer_name", "insurer", "insurer",
                "health insurers", _attrs("public b | a public insurer",
                                          "coverage_rate n rate | share of costs covered")),
        ),
        entities=(
            Entity("clinics", "clinic_id", "clinic", "clinics of the network", "opened_at",
                   "when the clinic opened",
                   _attrs("capacity n count 40 | patients per day",
                          "clinic_type c clinic_type | kind of clinic",
                          "urban b | in a city centre",
                          "city c city | city of the clinic",
                          "rating n score 1 5 | patient rating")),
            Entity("doctors", "doctor_id", "doctor", "doctors", "hired_at",
                   "when the doctor was hired",
                   _attrs("years_experience n count 10 | years in practice",
                          "seniority c seniority | seniority grade",
                          "accepts_new_patients b | accepts new patients",
                          "rating n score 1 5 | patient rating",
                          "languages_spoken n count 1 | languages spoken besides english"),
                   dims=("departments",), parents=("clinics",),
                   self_ref=("supervisor_id", "senior doctor supervising them")),
            Entity("patients", "patient_id", "patient", "registered patients", "registered_at",
                   "when the patient registered",
                   _attrs("age n int 0 95 | age in years",
                          "bmi n real 27 5 | body mass index",
                          "blood_type c blood_type | blood type",
                          "smoker b | smokes",
                          "sex c sex | sex",
                          "chronic_conditions n count 1 | number of chronic conditions",
                          "history t history | summary of medical history",
                          "city c city | home city",
                          "date_of_birth d past 45 | date of birth"),
                   dims=("insurers",), parents=("clinics",)),
        ),
        events=(
            Event("visits", "visit_id", "visit", "outpatient visits", "visit_at",
                  "when the visit took place", ("patients",),
                  _attrs("duration_min n pos 20 | consultation length in minutes",
                         "diagnosis_group c diagnosis | diagnosis group",
                         "severity c severity | assessed severity",
                         "follow_up b | follow-up booked",
                         "notes t symptom | clinical notes",
                         "cost n money 180 | billed amount in dollars"),
                  objects=("doctors", "clinics", "departments")),
            Event("prescriptions", "prescription_id", "prescription", "prescriptions",
                  "prescribed_at", "when it was prescribed", ("patients", "doctors"),
                  _attrs("drug_class c drug_class | class of drug",
                         "dosage_mg n pos 50 | dose in milligrams",
                         "refills n count 1 | refills allowed",
                         "generic b | generic drug",
                         "valid_until d future 30 | last day it can be dispensed"),
                  objects=("doctors", "patients")),
            Event("lab_tests", "test_id", "lab test", "laboratory tests", "taken_at",
                  "when the sample was taken", ("patients",),
                  _attrs("test_type c lab_test | test",
                         "result_value n real 100 20 | measured value",
                         "abnormal b | outside the reference range",
                         "fasting b | taken fasting"),
                  objects=("clinics",)),
            Event("admissions", "admission_id", "admission", "hospital admissions",
                  "admitted_at", "when the patient was admitted", ("patients",),
                  _attrs("length_of_stay n count 4 | nights in hospital",
                         "emergency b | admitted through the emergency room",
                         "ward c ward | ward",
                         "severity_score n score 0 10 | severity score on arrival"),
                  objects=("departments", "doctors")),
        ),
        details=(
            Detail("visit_procedures", "procedure_id", "procedure", "procedures done in a visit",
                   "visits",
                   _attrs("procedure c procedure | procedure",
                          "minutes n pos 15 | minutes taken",
                          "billed n money 90 | billed amount in dollars")),
        ),
        links=(
            Link("care_team", "patients", "doctors", "assigned_at",
                 "doctors caring for a patient",
                 _attrs("primary_doctor b | the patient's primary doctor")),
        ),
    ),
    Theme(
        name="education",
        dims=(
            Dim("faculties", "faculty_id", "faculty_name", "faculty", "faculty",
                "faculties of the university", _attrs("budget n money 2000000 | yearly budget in dollars")),
            Dim("campuses", "campus_id", "campus_name", "campus", "campus", "campuses",
                _attrs("residential b | has student housing",
                       "students_enrolled n count 3000 | students enrolled")),
        ),
        entities=(
            Entity("instructors", "instructor_id", "instructor", "teaching staff", "hired_at",
                   "when the instructor was hired",
                   _attrs("years_teaching n count 8 | years of teaching",
                          "academic_rank c academic_rank | academic rank",
                          "tenured b | has tenure",
                          "rating n score 1 5 | student rating"),
                   dims=("faculties",), self_ref=("mentor_id", "senior colleague mentoring them")),
            Entity("courses", "course_id", "course", "courses offered", None, "",
                   _attrs("credits n int 1 8 | credit points",
                          "level c course_level | level",
                          "online b | taught online",
                          "max_seats n count 40 | seats available",
                          "title t course_title | course title"),
                   dims=("faculties", "campuses")),
            Entity("students", "student_id", "student", "enrolled students", "enrolled_at",
                   "when the student enrolled",
                   _attrs("age n int 17 40 | age in years",
                          "entry_gpa n score 1 4 | grade point average on entry",
                          "major c major | declared major",
                          "scholarship b | holds a scholarship",
                          "part_time b | studies part time",
                          "home_city c city | home city",
                          "statement t motivation | theme of the personal statement"),
                   dims=("campuses", "faculties"),
                   self_ref=("buddy_id", "older student assigned as their buddy")),
        ),
        events=(
            Event("submissions", "submission_id", "submission", "assignment submissions",
                  "submitted_at", "when the work was submitted", ("students",),
                  _attrs("score n score 0 100 | score out of 100",
                         "late b | submitted after the deadline",
                         "attempt n count 1 | resubmissions before this one",
                         "grade c grade | letter grade",
                         "feedback t feedback | marker's feedback"),
                  objects=("courses",)),
            Event("logins", "login_id", "login", "sessions on the learning platform",
                  "logged_in_at", "when the session started", ("students",),
                  _attrs("minutes_active n pos 30 | minutes active",
                         "device c device | device used",
                         "pages_viewed n count 12 | pages viewed"),
                  objects=("courses",)),
            Event("exams", "exam_id", "exam", "exam sittings", "taken_at",
                  "when the exam was taken", ("students",),
                  _attrs("mark n score 0 100 | mark out of 100",
                         "passed b | passed",
                         "grade c grade | letter grade",
                         "extra_time b | had extra time"),
                  objects=("courses", "instructors")),
            Event("library_loans", "loan_id", "loan", "books borrowed", "borrowed_at",
                  "when the book was borrowed", ("students", "instructors"),
                  _attrs("subject c subject | subject of the book",
                         "days_kept n count 14 | days kept",
                         "renewed b | renewed at least once")),
        ),
        links=(
            Link("course_enrollments", "students", "courses", "enrolled_on",
                 "courses a student takes",
                 _attrs("audit b | attending without credit")),
        ),
    ),
    Theme(
        name="sports",
        dims=(
            Dim("leagues", "league_id", "league_name", "league", "league", "leagues",
                _attrs("professional b | a professional league",
                       "prize_money n money 500000 | prize money in dollars")),
            Dim("venues", "venue_id", "venue_name", "venue", "venue", "stadiums and grounds",
                _attrs("capacity n count 20000 | seats", "indoor b | covered")),
        ),
        entities=(
            Entity("teams", "team_id", "team", "clubs", None, "",
                   _attrs("founded_year n int 1880 2015 | year founded",
                          "budget_musd n money 40 | yearly budget in millions of dollars",
                          "home_city c city | home city",
                          "kit_color c color | main kit color",
                          "academy b | runs a youth academy"),
                   dims=("leagues", "venues")),
            Entity("coaches", "coach_id", "coach", "coaching staff", "appointed_at",
                   "when the coach was appointed",
                   _attrs("experience_years n count 8 | years of coaching",
                          "style c coaching_style | coaching style",
                          "licensed b | holds the top coaching licence",
                          "nationality c country | nationality"),
                   parents=("teams",)),
            Entity("players", "player_id", "player", "registered players", "signed_at",
                   "when the player signed",
                   _attrs("age n int 17 38 | age in years",
                          "height_cm n real 182 8 | height in centimetres",
                          "position c position | playing position",
                          "preferred_foot c foot | preferred foot",
                          "market_value n money 2000000 | market value in dollars",
                          "nationality c country | nationality",
                          "captain b | team captain",
                          "date_of_birth d past 25 | date of birth"),
                   parents=("teams",)),
        ),
        events=(
            Event("games", "game_id", "game", "games played", "played_at", "kick-off time",
                  ("teams",),
                  _attrs("goals_for n count 1 | goals scored",
                         "goals_against n count 1 | goals conceded",
                         "result c result | result",
                         "attendance n count 15000 | spectators",
                         "home b | played at home",
                         "weather c weather | weather at kick-off"),
                  objects=("venues",)),
            Event("appearances", "appearance_id", "appearance", "players' appearances",
                  "played_at", "kick-off time of the game", ("players",),
                  _attrs("minutes n int 1 90 | minutes played",
                         "goals n count 0.3 | goals scored",
                         "assists n count 0.2 | assists",
                         "match_rating n score 1 10 | rating of the performance",
                         "yellow_card b | booked",
                         "summary t performance | scout's summary"),
                  objects=("venues",)),
            Event("injuries", "injury_id", "injury", "injuries", "injured_at",
                  "when the injury happened", ("players",),
                  _attrs("body_part c body_part | injured body part",
                         "days_out n count 14 | days out",
                         "severity c severity | severity",
                         "surgery b | needed surgery")),
            Event("training_sessions", "session_id", "session", "training sessions",
                  "held_at", "start of the session", ("players", "coaches"),
                  _attrs("intensity c intensity | planned intensity",
                         "distance_km n pos 6 | distance covered in kilometres",
                         "heart_rate_avg n real 140 12 | average heart rate",
                         "completed b | completed the session"),
                  objects=("coaches",)),
        ),
    ),
    Theme(
        name="logistics",
        dims=(
            Dim("regions", "region_id", "region_name", "region", "region", "delivery regions",
                _attrs("toll_rate n rate | road toll per kilometre in dollars")),
            Dim("vehicle_types", "vehicle_type_id", "type_name", "vehicle", "vehicle type",
                "kinds of vehicle",
                _attrs("capacity_kg n pos 1500 | payload in kilograms", "electric b | electric")),
        ),
        entities=(
            Entity("warehouses", "warehouse_id", "warehouse", "warehouses", None, "",
                   _attrs("capacity_pallets n count 2000 | pallet places",
                          "automated b | automated picking",
                          "city c city | city",
                          "cold_storage b | has cold storage"),
                   dims=("regions",)),
            Entity("clients", "client_id", "client", "shipping clients", "signed_at",
                   "when the contract was signed",
                   _attrs("segment c segment | client segment",
                          "contract_value n money 20000 | yearly contract value in dollars",
                          "express_plan b | on the express plan",
                          "industry c industry | industry",
                          "city c city | head office city"),
                   dims=("regions",)),
            Entity("vehicles", "vehicle_id", "vehicle", "the fleet", "commissioned_at",
                   "when the vehicle entered service",
                   _attrs("model_year n int 2005 2024 | model year",
                          "mileage_km n pos 80000 | mileage at entry in kilometres",
                          "fuel c fuel | fuel",
                          "refrigerated b | refrigerated"),
                   dims=("vehicle_types",), parents=("warehouses",)),
            Entity("drivers", "driver_id", "driver", "drivers", "hired_at",
                   "when the driver was hired",
                   _attrs("years_licensed n count 8 | years holding a licence",
                          "rating n score 1 5 | customer rating",
                          "shift c shift | usual shift",
                          "full_time b | full time",
                          "license_class c license | licence class"),
                   dims=("regions",), parents=("warehouses",),
                   self_ref=("team_lead_id", "driver leading their team")),
        ),
        events=(
            Event("shipments", "shipment_id", "shipment", "shipments sent", "dispatched_at",
                  "when the shipment left", ("clients",),
                  _attrs("weight_kg n pos 40 | weight in kilograms",
                         "distance_km n pos 120 | distance in kilometres",
                         "service_level c service_level | service level",
                         "fragile b | fragile goods",
                         "cost n money 85 | price charged in dollars",
                         "status c shipment_status | last status",
                         "instructions t handling | handling instructions",
                         "promised_by d future 3 | promised delivery date"),
                  objects=("warehouses", "drivers")),
            Event("trips", "trip_id", "trip", "delivery trips", "started_at",
                  "when the trip started", ("drivers", "vehicles"),
                  _attrs("km n pos 150 | kilometres driven",
                         "stops n count 8 | stops made",
                         "fuel_litres n pos 30 | fuel used in litres",
                         "delayed b | finished late",
                         "weather c weather | weather"),
                  objects=("vehicles", "drivers")),
            Event("maintenance_jobs", "job_id", "maintenance job", "vehicle maintenance",
                  "serviced_at", "when the work started", ("vehicles",),
                  _attrs("job_type c maintenance | kind of work",
                         "cost n money 400 | cost in dollars",
                         "downtime_hours n pos 6 | hours off the road",
                         "unplanned b | unplanned repair")),
            Event("incidents", "incident_id", "incident", "incidents on the road",
                  "reported_at", "when it was reported", ("drivers",),
                  _attrs("incident_type c incident | kind of incident",
                         "damage_cost n money 800 | damage in dollars",
                         "at_fault b | driver at fault",
                         "description t incident_text | what happened"),
                  objects=("vehicles",)),
        ),
        details=(
            Detail("parcels", "parcel_id", "parcel", "parcels of a shipment", "shipments",
                   _attrs("parcel_weight_kg n pos 5 | weight in kilograms",
                          "insured b | insured",
                          "parcel_size c size | size class")),
        ),
        links=(
            Link("vehicle_assignments", "drivers", "vehicles", "assigned_at",
                 "vehicles a driver may drive",
                 _attrs("primary_vehicle b | the driver's main vehicle")),
        ),
    ),
    Theme(
        name="finance",
        dims=(
            Dim("branches", "branch_id", "branch_city", "city", "branch", "bank branches",
                _attrs("staff n count 12 | staff", "drive_through b | has a drive-through")),
            Dim("account_types", "account_type_id", "account_type", "account_type",
                "account type", "kinds of account",
                _attrs("monthly_fee n money 5 | monthly fee in dollars")),
        ),
        entities=(
            Entity("merchants", "merchant_id", "merchant", "merchants paid by card", None, "",
                   _attrs("merchant_category c merchant_category | merchant category",
                          "country c country | country",
                          "online_only b | sells online only",
                          "merchant_name t merchant | trading name")),
            Entity("advisors", "advisor_id", "advisor", "bank advisors", "hired_at",
                   "when the advisor was hired",
                   _attrs("years_experience n count 7 | years of experience",
                          "certified b | certified financial planner",
                          "seniority c seniority | seniority"),
                   dims=("branches",), self_ref=("manager_id", "advisor's manager")),
            Entity("customers", "customer_id", "customer", "bank customers", "joined_at",
                   "when the customer joined",
                   _attrs("age n int 18 90 | age in years",
                          "annual_income n money 60000 | yearly income in dollars",
                          "credit_score n int 300 850 | credit score",
                          "employment c employment | employment status",
                          "risk_rating c risk | internal risk rating",
                          "homeowner b | owns their home",
                          "segment c bank_segment | customer segment",
                          "date_of_birth d past 45 | date of birth"),
                   dims=("branches",)),
            Entity("accounts", "account_id", "account", "accounts held", "opened_at",
                   "when the account was opened",
                   _attrs("credit_limit n money 5000 | credit limit in dollars",
                          "interest_rate n rate | yearly interest rate",
                          "overdraft b | overdraft allowed",
                          "currency c currency | currency"),
                   dims=("account_types", "branches"), parents=("customers",)),
        ),
        events=(
            Event("transactions", "transaction_id", "transaction", "card and account transactions",
                  "posted_at", "when the transaction was posted", ("accounts", "customers"),
                  _attrs("amount n money 40 | amount in dollars",
                         "channel c pay_channel | channel",
                         "international b | abroad",
                         "transaction_type c transaction_type | kind of transaction",
                         "flagged b | flagged for review",
                         "memo t memo | memo line"),
                  objects=("merchants",)),
            Event("loan_applications", "application_id", "loan application",
                  "loan applications", "applied_at", "when the application was made",
                  ("customers",),
                  _attrs("requested_amount n money 15000 | amount requested in dollars",
                         "term_months n int 6 84 | term in months",
                         "purpose c loan_purpose | purpose",
                         "approved b | approved",
                         "interest_offered n rate | rate offered"),
                  objects=("advisors", "branches")),
            Event("support_calls", "call_id", "call", "calls to customer support",
                  "called_at", "when the call started", ("customers",),
                  _attrs("minutes n pos 8 | length in minutes",
                         "topic c call_topic | topic",
                         "resolved b | resolved on the call",
                         "satisfaction n int 1 5 | satisfaction rating",
                         "transcript t call_summary | summary of the call"),
                  objects=("advisors",)),
        ),
        links=(
            Link("advisor_assignments", "customers", "advisors", "assigned_at",
                 "advisors looking after a customer",
                 _attrs("main_contact b | the customer's main contact")),
        ),
    ),
    Theme(
        name="media",
        dims=(
            Dim("genres", "genre_id", "genre_name", "genre", "genre", "genres",
                _attrs("kids_friendly b | suitable for children")),
            Dim("plans", "plan_id", "plan_name", "plan", "plan", "subscription plans",
                _attrs("monthly_price n money 10 | monthly price in dollars",
                       "max_screens n count 2 | screens at once")),
        ),
        entities=(
            Entity("studios", "studio_id", "studio", "production studios", None, "",
                   _attrs("studio_name c studio | studio name",
                          "country c country | country",
                          "independent b | independent",
                          "founded_year n int 1920 2020 | year founded")),
            Entity("titles", "title_id", "title", "films and series in the catalogue",
                   "released_at", "when the title was released on the service",
                   _attrs("runtime_min n pos 95 | running time in minutes",
                          "maturity c maturity | maturity rating",
                          "original b | produced in house",
                          "synopsis t synopsis | synopsis",
                          "budget_musd n money 30 | budget in millions of dollars"),
                   dims=("genres",), parents=("studios",)),
            Entity("users", "user_id", "user", "subscribers", "signed_up_at",
                   "when the user signed up",
                   _attrs("age n int 13 80 | age in years",
                          "country c country | country",
                          "language c language | interface language",
                          "autoplay b | autoplay switched on",
                          "profiles n count 2 | profiles on the account"),
                   dims=("plans",), self_ref=("invited_by", "user who invited them")),
        ),
        events=(
            Event("views", "view_id", "view", "viewing sessions", "started_at",
                  "when playback started", ("users",),
                  _attrs("minutes_watched n pos 40 | minutes watched",
                         "completed b | watched to the end",
                         "device c device | device",
                         "quality c stream_quality | stream quality"),
                  objects=("titles",)),
            Event("ratings", "rating_id", "rating", "ratings given", "rated_at",
                  "when the rating was given", ("users",),
                  _attrs("stars n int 1 5 | stars",
                         "thumbs_up b | thumbs up",
                         "review t review | short review"),
                  objects=("titles",)),
            Event("payments", "payment_id", "payment", "subscription payments", "paid_at",
                  "when the payment was taken", ("users",),
                  _attrs("amount n money 12 | amount in dollars",
                         "method c payment | payment method",
                         "failed b | the payment failed"),
                  objects=("plans",)),
            Event("searches", "search_id", "search", "catalogue searches", "searched_at",
                  "when the search was made", ("users",),
                  _attrs("results n count 20 | results shown",
                         "clicked b | a result was clicked",
                         "device c device | device"),
                  objects=("genres",)),
        ),
        links=(
            Link("watchlist", "users", "titles", "added_at", "titles saved to watch later",
                 _attrs("notify b | notify when new episodes arrive")),
        ),
    ),
)
