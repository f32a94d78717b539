"""The cases of benchmarks/tool_call_eval.py: 75 prompts in five categories over the tools of tools.py.

    simple       one tool offered, and it fits (the call and its arguments are checked)
    multiple     3-4 tools of mixed domains offered, one fits
    parallel     3-4 tools offered, the prompt needs two calls in one turn
    irrelevance  3-4 tools offered, none is needed: the right answer is text
    multi_turn   the conversation already holds the assistant's call(s) and the tool's result; the right answer is
                 text that uses the result (checked by expected substrings, e.g. the number the tool returned)

Every schema closes its objects (``additionalProperties: false``), as OpenAI's strict mode does, so a call that
adds a property the tool never named does not validate. Prompts give dates as YYYY-MM-DD and amounts in figures:
what is measured is the choice of call and the copying of values into the schema, not calendar arithmetic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from benchmarks.data.tools import HOME, LIFE, MONEY, MUSIC, OPS, SHOP, TOOLS, TRIP, WORK

# -- expected values -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AnyOf:
    """Any one of these values (where natural language is ambiguous: "NYC" | "New York")."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Place:
    """A place name: ``name`` or one of ``alts``, alone or followed by ", <region or country>" ("Lisbon, Portugal")."""

    name: str
    alts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Contains:
    """Free text (a message body, a search query) that must contain this, case-insensitively."""

    text: str


def one_of(*values: Any) -> AnyOf:
    return AnyOf(values)


def place(name: str, *alts: str) -> Place:
    return Place(name, alts)


# -- cases -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """An expected call: the function and the arguments that must match (those not named here are not checked)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    prompt: str
    tools: tuple[str, ...]
    # The calls a right answer makes, in any order; () means a text answer.
    calls: tuple[Call, ...] = ()
    # multi_turn: the assistant's calls and the tools' results already in the conversation...
    history: tuple[dict[str, Any], ...] = ()
    # ...and what the text answer must contain: each group is alternatives, one of which must appear.
    answer: tuple[tuple[str, ...], ...] = ()

    def openai_tools(self) -> list[dict[str, Any]]:
        return [TOOLS[n] for n in self.tools]

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": self.prompt}, *self.history]

    @property
    def needs_call(self) -> bool:
        return bool(self.calls)


def _calls(*calls: tuple[str, dict[str, Any]]) -> tuple[Call, ...]:
    return tuple(Call(n, a) for n, a in calls)


def simple(id: str, prompt: str, function: str, /, **arguments: Any) -> Case:
    return Case(id, "simple", prompt, (function,), (Call(function, arguments),))


def multiple(id: str, tools: tuple[str, ...], prompt: str, function: str, /, **arguments: Any) -> Case:
    assert function in tools
    return Case(id, "multiple", prompt, tools, (Call(function, arguments),))


def parallel(id: str, tools: tuple[str, ...], prompt: str, *calls: tuple[str, dict[str, Any]]) -> Case:
    assert len(calls) == 2 and all(n in tools for n, _ in calls)
    return Case(id, "parallel", prompt, tools, _calls(*calls))


def irrelevant(id: str, tools: tuple[str, ...], prompt: str) -> Case:
    return Case(id, "irrelevance", prompt, tools)


def turn(
    id: str,
    tools: tuple[str, ...],
    prompt: str,
    done: list[tuple[str, dict[str, Any], dict[str, Any]]],
    *answer: tuple[str, ...],
) -> Case:
    """A multi-turn case: ``done`` holds (function, arguments, result) of the calls the assistant already made."""
    calls = [
        {"id": f"call_{id}_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
        for i, (n, a, _) in enumerate(done)
    ]
    results = [
        {"role": "tool", "tool_call_id": c["id"], "content": json.dumps(r)}
        for c, (_, _, r) in zip(calls, done, strict=True)
    ]
    history = ({"role": "assistant", "content": None, "tool_calls": calls}, *results)
    assert all(n in tools for n, _, _ in done)
    return Case(id, "multi_turn", prompt, tools, history=history, answer=answer)


SIMPLE = [
    simple("s-weather", "What's the weather like in Lisbon right now?", "get_weather", location=place("Lisbon")),
    simple(
        "s-forecast",
        "Give me the 5-day forecast for Denver in fahrenheit.",
        "get_forecast",
        location=place("Denver"),
        days=5,
        unit="fahrenheit",
    ),
    simple("s-quote", "What is NVIDIA (NVDA) trading at?", "get_stock_quote", symbol="NVDA"),
    simple(
        "s-currency",
        "How much is 250 euros in Japanese yen?",
        "convert_currency",
        amount=250,
        from_currency=one_of("EUR", "euro", "euros"),
        to_currency=one_of("JPY", "yen", "Japanese yen"),
    ),
    simple(
        "s-event",
        "Put a meeting called 'Budget review' on my calendar on 2025-03-14 at 15:30 for 45 minutes.",
        "create_event",
        title="Budget review",
        date="2025-03-14",
        start_time="15:30",
        duration_minutes=45,
    ),
    simple(
        "s-files",
        "Find PDF files about the quarterly tax report.",
        "search_files",
        query=Contains("tax"),
        file_type="pdf",
    ),
    simple(
        "s-calc",
        "Use the calculator to compute 1234 * 5678.",
        "calculate",
        expression=one_of("1234 * 5678", "1234*5678"),
    ),
    simple(
        "s-flights",
        "Find flights from Boston to Chicago on 2025-06-02 for 2 passengers in business class.",
        "search_flights",
        origin=place("Boston", "BOS"),
        destination=place("Chicago", "ORD", "CHI"),
        date="2025-06-02",
        passengers=2,
        cabin="business",
    ),
    simple("s-cart", "Add 3 of product SKU-88412 to my cart.", "add_to_cart", product_id="SKU-88412", quantity=3),
    simple(
        "s-restart",
        "Restart the payments service in production.",
        "restart_service",
        service=one_of("payments", "payments service", "payments-service", "payment"),
        environment="production",
    ),
    simple(
        "s-logs",
        "Show me the error logs of the auth service from the last 30 minutes.",
        "get_logs",
        service=one_of("auth", "auth service", "auth-service"),
        since_minutes=30,
        level="error",
    ),
    simple(
        "s-workout",
        "Log a 40 minute run; I covered 7.5 km.",
        "log_workout",
        activity="running",
        duration_minutes=40,
        distance_km=7.5,
    ),
    simple("s-volume", "Turn the volume to 35 percent.", "set_volume", level=35),
    simple(
        "s-shipment",
        "Ship a 2.5 kg parcel by express to Maria Lopez, 12 Calle Mayor, Madrid, Spain.",
        "create_shipment",
        recipient={
            "name": "Maria Lopez",
            "street": Contains("Calle Mayor"),
            "city": "Madrid",
            "country": one_of("Spain", "ES"),
        },
        weight_kg=2.5,
        express=True,
    ),
    simple(
        "s-playlist",
        "Make a playlist named 'Road Trip' with 'Hotel California' by Eagles and 'Africa' by Toto.",
        "create_playlist",
        name="Road Trip",
        songs=[
            {"title": "Hotel California", "artist": one_of("Eagles", "The Eagles")},
            {"title": "Africa", "artist": "Toto"},
        ],
    ),
    simple(
        "s-thermostat",
        "Set the thermostat to 21.5 degrees in heat mode.",
        "set_thermostat",
        temperature=21.5,
        mode="heat",
    ),
    simple(
        "s-email",
        "Email alice@example.com and bob@example.com with the subject 'Offsite', saying the offsite moves to Friday.",
        "send_email",
        to=["alice@example.com", "bob@example.com"],
        subject="Offsite",
        body=Contains("Friday"),
    ),
    simple(
        "s-hotel",
        "Book a hotel in Kyoto from 2025-04-10 to 2025-04-13 for 2 guests.",
        "book_hotel",
        city="Kyoto",
        check_in="2025-04-10",
        check_out="2025-04-13",
        guests=2,
    ),
]

MULTIPLE = [
    multiple(
        "m-light", HOME, "Dim the living room lights to 30%.", "set_light", room="living room", on=True, brightness=30
    ),
    multiple("m-timer", HOME, "Set a 12 minute timer for the pasta.", "set_timer", minutes=12),
    multiple("m-heat", HOME, "It's cold in here, set the heating to 23 degrees.", "set_thermostat", temperature=23),
    multiple(
        "m-scale",
        OPS,
        "Scale the checkout deployment to 6 replicas in the shop namespace.",
        "scale_deployment",
        deployment="checkout",
        replicas=6,
        namespace="shop",
    ),
    multiple(
        "m-logs",
        OPS,
        "Get the last 2 hours of logs for the search-api service.",
        "get_logs",
        service="search-api",
        since_minutes=120,
    ),
    multiple(
        "m-restart",
        OPS,
        "The database in staging is stuck; restart it.",
        "restart_service",
        service=one_of("database", "db"),
        environment="staging",
    ),
    multiple(
        "m-currency",
        MONEY,
        "Convert 1500 Canadian dollars to US dollars.",
        "convert_currency",
        amount=1500,
        from_currency=one_of("CAD", "Canadian dollars"),
        to_currency=one_of("USD", "US dollars"),
    ),
    multiple("m-quote", MONEY, "What's Microsoft's share price (MSFT)?", "get_stock_quote", symbol="MSFT"),
    multiple("m-weather", MONEY, "Will I need an umbrella in Seattle today?", "get_weather", location=place("Seattle")),
    multiple(
        "m-directions",
        TRIP,
        "How do I walk from the Louvre to the Eiffel Tower?",
        "get_directions",
        origin=Contains("Louvre"),
        destination=Contains("Eiffel"),
        mode="walking",
    ),
    multiple(
        "m-flight",
        TRIP,
        "Find me a flight from Paris to Rome on 2025-09-20.",
        "search_flights",
        origin=place("Paris", "CDG", "PAR", "ORY"),
        destination=place("Rome", "FCO", "ROM"),
        date="2025-09-20",
    ),
    multiple(
        "m-forecast",
        TRIP,
        "What's the weather going to be in Reykjavik over the next 3 days?",
        "get_forecast",
        location=place("Reykjavik"),
        days=3,
    ),
    multiple("m-track", SHOP, "Where is my order 7731-XZ?", "track_order", order_id="7731-XZ"),
    multiple(
        "m-products",
        SHOP,
        "Show me running shoes under 80 dollars in the sports category.",
        "search_products",
        query=Contains("running shoe"),
        max_price=80,
        category="sports",
    ),
    multiple(
        "m-units",
        SHOP,
        "How many kilograms is 150 pounds?",
        "convert_units",
        value=150,
        from_unit=one_of("pounds", "pound", "lb", "lbs"),
        to_unit=one_of("kilograms", "kilogram", "kg"),
    ),
    multiple("m-agenda", WORK, "What's on my calendar on 2025-05-01?", "list_events", date="2025-05-01"),
    multiple(
        "m-sheet",
        WORK,
        "Find the Excel spreadsheet with the 2024 sales numbers.",
        "search_files",
        query=Contains("sales"),
        file_type="xlsx",
    ),
    multiple(
        "m-doctor",
        LIFE,
        "I need a dermatologist in Chicago who takes new patients.",
        "find_doctor",
        specialty=one_of("dermatology", "dermatologist"),
        city="Chicago",
        accepts_new_patients=True,
    ),
    multiple(
        "m-text",
        LIFE,
        "Text Sam that I'm running 10 minutes late.",
        "send_message",
        recipient="Sam",
        text=Contains("late"),
    ),
    multiple(
        "m-play", MUSIC, "Play Bohemian Rhapsody by Queen.", "play_song", title="Bohemian Rhapsody", artist="Queen"
    ),
]

PARALLEL = [
    parallel(
        "p-weather",
        MONEY,
        "What's the weather in Oslo and in Helsinki?",
        ("get_weather", {"location": place("Oslo")}),
        ("get_weather", {"location": place("Helsinki")}),
    ),
    parallel(
        "p-quotes",
        MONEY,
        "Get me the stock quotes for AAPL and AMZN.",
        ("get_stock_quote", {"symbol": "AAPL"}),
        ("get_stock_quote", {"symbol": "AMZN"}),
    ),
    parallel(
        "p-home",
        HOME,
        "Turn off the kitchen light and set a 20 minute timer.",
        ("set_light", {"room": "kitchen", "on": False}),
        ("set_timer", {"minutes": 20}),
    ),
    parallel(
        "p-ops",
        OPS,
        "Restart the cache service in dev and scale the worker deployment to 4 replicas.",
        ("restart_service", {"service": one_of("cache", "cache service", "cache-service"), "environment": "dev"}),
        ("scale_deployment", {"deployment": "worker", "replicas": 4}),
    ),
    parallel(
        "p-trip",
        TRIP,
        "Book a hotel in Vienna from 2025-07-01 to 2025-07-04 for 1 guest, and get the 4-day forecast for Vienna.",
        ("book_hotel", {"city": "Vienna", "check_in": "2025-07-01", "check_out": "2025-07-04", "guests": 1}),
        ("get_forecast", {"location": place("Vienna"), "days": 4}),
    ),
    parallel(
        "p-track",
        SHOP,
        "Track my orders A100 and B200.",
        ("track_order", {"order_id": "A100"}),
        ("track_order", {"order_id": "B200"}),
    ),
    parallel(
        "p-work",
        WORK,
        "Email carol@example.com with the subject 'Slides' saying they are ready, and list my events on 2025-02-11.",
        ("send_email", {"to": ["carol@example.com"], "subject": "Slides"}),
        ("list_events", {"date": "2025-02-11"}),
    ),
    parallel(
        "p-translate",
        LIFE,
        "Translate 'good night' into French and into Italian.",
        ("translate_text", {"text": Contains("good night"), "target_language": one_of("French", "fr")}),
        ("translate_text", {"text": Contains("good night"), "target_language": one_of("Italian", "it")}),
    ),
    parallel(
        "p-music",
        MUSIC,
        "Play Yesterday by The Beatles and set the volume to 60.",
        ("play_song", {"title": "Yesterday", "artist": one_of("The Beatles", "Beatles")}),
        ("set_volume", {"level": 60}),
    ),
    parallel(
        "p-currency",
        MONEY,
        "Convert 100 USD to EUR, and 100 USD to GBP.",
        ("convert_currency", {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}),
        ("convert_currency", {"amount": 100, "from_currency": "USD", "to_currency": "GBP"}),
    ),
    parallel(
        "p-workouts",
        LIFE,
        "Log a 30 minute swim and a 60 minute yoga session.",
        ("log_workout", {"activity": "swimming", "duration_minutes": 30}),
        ("log_workout", {"activity": "yoga", "duration_minutes": 60}),
    ),
    parallel(
        "p-logs",
        OPS,
        "Fetch the warning logs of the last 15 minutes for the gateway service and for the billing service.",
        ("get_logs", {"service": one_of("gateway", "gateway service"), "since_minutes": 15, "level": "warning"}),
        ("get_logs", {"service": one_of("billing", "billing service"), "since_minutes": 15, "level": "warning"}),
    ),
]

IRRELEVANCE = [
    irrelevant("i-capital", MONEY, "What is the capital of Australia?"),
    irrelevant("i-haiku", HOME, "Write a haiku about the sea."),
    irrelevant("i-pod", OPS, "Explain what a Kubernetes pod is in two sentences."),
    irrelevant("i-ocean", TRIP, "Which is bigger, the Pacific or the Atlantic Ocean?"),
    irrelevant("i-thanks", SHOP, "Thanks, that's all I needed!"),
    irrelevant("i-polite", WORK, "Rewrite this more politely: 'send me the file now'."),
    irrelevant("i-sleep", LIFE, "How many hours of sleep do adults typically need?"),
    irrelevant("i-composer", MUSIC, "Who composed The Four Seasons?"),
    irrelevant("i-etf", MONEY, "What does the acronym ETF stand for?"),
    irrelevant("i-joke", HOME, "Tell me a short joke about computers."),
    irrelevant("i-visa", TRIP, "What's the difference between a visa and a passport?"),
    irrelevant("i-python", OPS, "Write a Python function that reverses a string."),
]

MULTI_TURN = [
    turn(
        "t-weather",
        MONEY,
        "What's the weather in Paris?",
        [("get_weather", {"location": "Paris"}, {"temperature_c": 18, "condition": "light rain"})],
        ("18",),
        ("rain",),
    ),
    turn(
        "t-quote",
        MONEY,
        "How much is one NVDA share?",
        [("get_stock_quote", {"symbol": "NVDA"}, {"symbol": "NVDA", "price": 903.56, "currency": "USD"})],
        ("903.56",),
    ),
    turn(
        "t-currency",
        MONEY,
        "How much is 250 euros in yen?",
        [
            (
                "convert_currency",
                {"amount": 250, "from_currency": "EUR", "to_currency": "JPY"},
                {"converted_amount": 40125, "rate": 160.5},
            )
        ],
        ("40125", "40,125", "40 125"),
    ),
    turn(
        "t-track",
        SHOP,
        "Where is my order 7731-XZ?",
        [("track_order", {"order_id": "7731-XZ"}, {"status": "in transit", "carrier": "DHL", "eta": "2025-03-18"})],
        ("DHL",),
        ("2025-03-18", "March 18", "18 March", "Mar 18", "18th"),
    ),
    turn(
        "t-agenda",
        WORK,
        "What's on my calendar on 2025-05-01?",
        [
            (
                "list_events",
                {"date": "2025-05-01"},
                {"events": [{"title": "Dentist", "start": "09:00"}, {"title": "Team lunch", "start": "12:30"}]},
            )
        ],
        ("Dentist",),
        ("lunch",),
    ),
    turn(
        "t-flight",
        TRIP,
        "Find me a flight from Boston to Chicago on 2025-06-02.",
        [
            (
                "search_flights",
                {"origin": "Boston", "destination": "Chicago", "date": "2025-06-02"},
                {"flights": [{"airline": "United", "flight": "UA 1183", "departs": "07:45", "price_usd": 412}]},
            )
        ],
        ("412",),
    ),
    turn(
        "t-logs",
        OPS,
        "Why is the orders service failing? Check its error logs of the last hour.",
        [
            (
                "get_logs",
                {"service": "orders", "since_minutes": 60, "level": "error"},
                {"entries": [{"level": "error", "message": "connection refused to db:5432", "count": 27}]},
            )
        ],
        ("refused",),
    ),
    turn(
        "t-calc",
        MONEY,
        "What is 1234 * 5678?",
        [("calculate", {"expression": "1234 * 5678"}, {"result": 7006652})],
        ("7006652", "7,006,652", "7 006 652"),
    ),
    turn(
        "t-doctor",
        LIFE,
        "Find me a cardiologist in Boston.",
        [
            (
                "find_doctor",
                {"specialty": "cardiology", "city": "Boston"},
                {"doctors": [{"name": "Dr. Priya Nair", "address": "220 Lake St", "accepts_new_patients": True}]},
            )
        ],
        ("Nair",),
    ),
    turn(
        "t-forecast",
        TRIP,
        "Will it snow in Reykjavik tomorrow?",
        [
            (
                "get_forecast",
                {"location": "Reykjavik", "days": 1},
                {"days": [{"date": "2025-01-10", "high_c": 2, "low_c": -3, "condition": "snow"}]},
            )
        ],
        ("snow",),
    ),
    turn(
        "t-scale",
        OPS,
        "Scale the checkout deployment to 6 replicas.",
        [
            (
                "scale_deployment",
                {"deployment": "checkout", "replicas": 6},
                {"deployment": "checkout", "replicas": 6, "status": "rolled out"},
            )
        ],
        ("6", "six"),
    ),
    turn(
        "t-units",
        SHOP,
        "How many kilometres is a marathon of 26.2 miles?",
        [("convert_units", {"value": 26.2, "from_unit": "miles", "to_unit": "km"}, {"value": 42.16, "unit": "km"})],
        ("42.16", "42.2"),
    ),
    turn(
        "t-two-cities",
        MONEY,
        "What's the weather in Oslo and in Helsinki?",
        [
            ("get_weather", {"location": "Oslo"}, {"temperature_c": -4, "condition": "clear"}),
            ("get_weather", {"location": "Helsinki"}, {"temperature_c": 1, "condition": "cloudy"}),
        ],
        ("-4", "minus 4", "−4"),
        ("cloud",),
    ),
]

CASES: list[Case] = [*SIMPLE, *MULTIPLE, *PARALLEL, *IRRELEVANCE, *MULTI_TURN]
CATEGORIES = ("simple", "multiple", "parallel", "irrelevance", "multi_turn")
assert len({c.id for c in CASES}) == len(CASES) >= 60
assert {c.category for c in CASES} == set(CATEGORIES)
assert all(n in TOOLS for c in CASES for n in c.tools)
