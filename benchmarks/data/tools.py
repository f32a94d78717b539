"""The tools of benchmarks/tool_call_eval.py: 31 of them in ten domains, and the mixed sets the multi-tool cases offer.

Every schema closes its objects (``additionalProperties: false``), as OpenAI's strict mode does, so a call that
adds a property the tool never named does not validate.
"""

from __future__ import annotations

from typing import Any

# -- tools -----------------------------------------------------------------------------------------------------------


def _closed(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    fn = {"name": name, "description": description, "parameters": _closed(properties, required)}
    return {"type": "function", "function": fn}


def _s(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _int(description: str, lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "description": description, "minimum": lo, "maximum": hi}


def _enum(description: str, *values: str) -> dict[str, Any]:
    return {"type": "string", "description": description, "enum": list(values)}


_DATE = _s("Date as YYYY-MM-DD")
_UNIT = _enum("Temperature unit", "celsius", "fahrenheit")
_EMAILS = {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "Email addresses"}

_TOOLS = [
    # weather
    _tool(
        "get_weather",
        "Get the current weather at a location",
        {"location": _s("City name, e.g. Paris"), "unit": _UNIT},
        ["location"],
    ),
    _tool(
        "get_forecast",
        "Get the daily weather forecast for the coming days",
        {"location": _s("City name"), "days": _int("Number of days to forecast", 1, 10), "unit": _UNIT},
        ["location", "days"],
    ),
    # finance
    _tool("get_stock_quote", "Get the latest price of a stock", {"symbol": _s("Ticker symbol, e.g. AAPL")}, ["symbol"]),
    _tool(
        "convert_currency",
        "Convert an amount of money from one currency to another",
        {
            "amount": {"type": "number", "minimum": 0, "description": "Amount to convert"},
            "from_currency": _s("ISO 4217 code of the source currency, e.g. USD"),
            "to_currency": _s("ISO 4217 code of the target currency, e.g. EUR"),
        },
        ["amount", "from_currency", "to_currency"],
    ),
    # math
    _tool(
        "calculate",
        "Evaluate an arithmetic expression",
        {"expression": _s("The expression, e.g. (2 + 3) * 4")},
        ["expression"],
    ),
    _tool(
        "convert_units",
        "Convert a measurement between units",
        {
            "value": {"type": "number", "description": "The value to convert"},
            "from_unit": _s("Unit of the value, e.g. miles"),
            "to_unit": _s("Unit to convert to, e.g. km"),
        },
        ["value", "from_unit", "to_unit"],
    ),
    # calendar
    _tool(
        "create_event",
        "Create a calendar event",
        {
            "title": _s("Event title"),
            "date": _DATE,
            "start_time": _s("Start time as HH:MM, 24-hour clock"),
            "duration_minutes": _int("Length of the event in minutes", 5, 480),
            "attendees": _EMAILS,
        },
        ["title", "date", "start_time"],
    ),
    _tool("list_events", "List the calendar events on a day", {"date": _DATE}, ["date"]),
    # files
    _tool(
        "search_files",
        "Search the user's documents",
        {
            "query": _s("Words to search for"),
            "file_type": _enum("Kind of file", "pdf", "docx", "xlsx", "txt", "image", "any"),
            "max_results": _int("Most results to return", 1, 50),
        },
        ["query"],
    ),
    _tool(
        "delete_file",
        "Delete a file",
        {"path": _s("Path of the file"), "permanent": {"type": "boolean", "description": "Skip the trash"}},
        ["path"],
    ),
    # travel
    _tool(
        "search_flights",
        "Search for flights",
        {
            "origin": _s("Departure city or airport code"),
            "destination": _s("Arrival city or airport code"),
            "date": _DATE,
            "passengers": _int("Number of passengers", 1, 9),
            "cabin": _enum("Cabin class", "economy", "premium_economy", "business", "first"),
        },
        ["origin", "destination", "date"],
    ),
    _tool(
        "book_hotel",
        "Book a hotel room",
        {
            "city": _s("City of the hotel"),
            "check_in": _DATE,
            "check_out": _DATE,
            "guests": _int("Number of guests", 1, 8),
        },
        ["city", "check_in", "check_out", "guests"],
    ),
    _tool(
        "get_directions",
        "Get directions between two places",
        {
            "origin": _s("Starting point"),
            "destination": _s("Where to go"),
            "mode": _enum("How to travel", "driving", "walking", "transit", "cycling"),
        },
        ["origin", "destination"],
    ),
    # shopping
    _tool(
        "search_products",
        "Search the shop's catalogue",
        {
            "query": _s("What to look for"),
            "max_price": {"type": "number", "minimum": 0, "description": "Highest price in USD"},
            "category": _enum("Product category", "electronics", "clothing", "books", "home", "toys", "sports"),
        },
        ["query"],
    ),
    _tool(
        "add_to_cart",
        "Add a product to the shopping cart",
        {"product_id": _s("The product's id"), "quantity": _int("How many", 1, 99)},
        ["product_id", "quantity"],
    ),
    _tool("track_order", "Get the delivery status of an order", {"order_id": _s("The order number")}, ["order_id"]),
    _tool(
        "create_shipment",
        "Ship a parcel",
        {
            "recipient": _closed(
                {"name": _s("Full name"), "street": _s("Street address"), "city": _s("City"), "country": _s("Country")},
                ["name", "street", "city", "country"],
            ),
            "weight_kg": {"type": "number", "exclusiveMinimum": 0, "maximum": 30, "description": "Parcel weight"},
            "express": {"type": "boolean", "description": "Next-day delivery"},
        },
        ["recipient", "weight_kg"],
    ),
    # devops
    _tool(
        "restart_service",
        "Restart a service",
        {"service": _s("Service name"), "environment": _enum("Environment", "dev", "staging", "production")},
        ["service", "environment"],
    ),
    _tool(
        "scale_deployment",
        "Set the number of replicas of a Kubernetes deployment",
        {
            "deployment": _s("Deployment name"),
            "replicas": _int("Desired replicas", 0, 100),
            "namespace": _s("Kubernetes namespace"),
        },
        ["deployment", "replicas"],
    ),
    _tool(
        "get_logs",
        "Fetch recent log lines of a service",
        {
            "service": _s("Service name"),
            "since_minutes": _int("How far back to look, in minutes", 1, 1440),
            "level": _enum("Lowest level to include", "debug", "info", "warning", "error"),
        },
        ["service", "since_minutes"],
    ),
    # health
    _tool(
        "log_workout",
        "Record a workout in the fitness diary",
        {
            "activity": _enum("Kind of workout", "running", "cycling", "swimming", "walking", "yoga", "strength"),
            "duration_minutes": _int("Duration in minutes", 1, 600),
            "distance_km": {"type": "number", "minimum": 0, "description": "Distance covered, if any"},
        },
        ["activity", "duration_minutes"],
    ),
    _tool(
        "find_doctor",
        "Find doctors near the user",
        {
            "specialty": _s("Medical specialty, e.g. cardiology"),
            "city": _s("City"),
            "accepts_new_patients": {"type": "boolean", "description": "Only doctors taking new patients"},
        },
        ["specialty", "city"],
    ),
    # music
    _tool(
        "play_song",
        "Play a song",
        {"title": _s("Song title"), "artist": _s("Performer")},
        ["title"],
    ),
    _tool("set_volume", "Set the speaker volume", {"level": _int("Volume in percent", 0, 100)}, ["level"]),
    _tool(
        "create_playlist",
        "Create a playlist",
        {
            "name": _s("Playlist name"),
            "songs": {
                "type": "array",
                "minItems": 1,
                "items": _closed({"title": _s("Song title"), "artist": _s("Performer")}, ["title", "artist"]),
            },
        },
        ["name", "songs"],
    ),
    # messaging
    _tool(
        "send_email",
        "Send an email",
        {"to": _EMAILS, "subject": _s("Subject line"), "body": _s("Message text"), "cc": _EMAILS},
        ["to", "subject", "body"],
    ),
    _tool(
        "send_message",
        "Send a text message to a contact",
        {"recipient": _s("Contact name"), "text": _s("Message text")},
        ["recipient", "text"],
    ),
    _tool(
        "translate_text",
        "Translate text into another language",
        {"text": _s("Text to translate"), "target_language": _s("Language to translate into")},
        ["text", "target_language"],
    ),
    # home
    _tool(
        "set_thermostat",
        "Set the home thermostat",
        {
            "temperature": {"type": "number", "minimum": 10, "maximum": 30, "description": "Target in celsius"},
            "mode": _enum("Operating mode", "heat", "cool", "auto", "off"),
        },
        ["temperature"],
    ),
    _tool(
        "set_light",
        "Switch a room's lights",
        {
            "room": _s("Room name"),
            "on": {"type": "boolean", "description": "true to switch on, false to switch off"},
            "brightness": _int("Brightness in percent", 0, 100),
        },
        ["room", "on"],
    ),
    _tool(
        "set_timer",
        "Start a countdown timer",
        {"minutes": _int("Length in minutes", 1, 1440), "label": _s("What the timer is for")},
        ["minutes"],
    ),
]
TOOLS: dict[str, dict[str, Any]] = {t["function"]["name"]: t for t in _TOOLS}

# The tool sets of the multi-tool categories, each across domains.
MONEY = ("get_stock_quote", "convert_currency", "calculate", "get_weather")
HOME = ("set_thermostat", "set_light", "set_timer", "play_song")
OPS = ("restart_service", "scale_deployment", "get_logs")
TRIP = ("search_flights", "book_hotel", "get_directions", "get_forecast")
SHOP = ("search_products", "add_to_cart", "track_order", "convert_units")
WORK = ("create_event", "list_events", "send_email", "search_files")
LIFE = ("log_workout", "find_doctor", "send_message", "translate_text")
MUSIC = ("play_song", "set_volume", "create_playlist")
