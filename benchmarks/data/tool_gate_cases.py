"""The tuning set of the call gate (ember.runtimes.text.call_gate): 42 prompts over the tool sets of tools.py, none
of them in tool_cases.py, so that a threshold chosen here is scored on prompts it was not chosen on.

    irrelevance  20 prompts no offered tool fits: knowledge, writing, code, small talk
    fits         22 prompts one offered tool fits (only whether a call begins is measured, not the call)

benchmarks/tool_gate_probe.py prints the model's first-token call probability on each.
"""

from __future__ import annotations

from benchmarks.data.tool_cases import Case
from benchmarks.data.tools import HOME, LIFE, MONEY, MUSIC, OPS, SHOP, TRIP, WORK


def _none(id: str, tools: tuple[str, ...], prompt: str) -> Case:
    return Case(id, "irrelevance", prompt, tools)


def _fits(id: str, tools: tuple[str, ...], prompt: str, function: str) -> Case:
    assert function in tools
    return Case(id, "fits", prompt, tools)


GATE_CASES = [
    _none("g-austen", MONEY, "Who wrote Pride and Prejudice?"),
    _none("g-moon", MONEY, "Who was the first person to walk on the moon?"),
    _none("g-boil", HOME, "What is the boiling point of water at sea level?"),
    _none("g-catname", HOME, "Suggest a good name for a grey cat."),
    _none("g-404", OPS, "What does HTTP status code 404 mean?"),
    _none("g-thread", OPS, "What is the difference between a process and a thread?"),
    _none("g-brazil", TRIP, "What language do people speak in Brazil?"),
    _none("g-sky", TRIP, "Why is the sky blue?"),
    _none("g-hello", SHOP, "Hello! How are you today?"),
    _none("g-spell", SHOP, "How do you spell the word 'necessary' backwards?"),
    _none("g-romeo", WORK, "Summarize the plot of Romeo and Juliet in one sentence."),
    _none("g-limerick", WORK, "Write a limerick about Mondays."),
    _none("g-gold", LIFE, "What is the chemical symbol for gold?"),
    _none("g-photo", LIFE, "Explain photosynthesis in simple words."),
    _none("g-guitar", MUSIC, "How many strings does a standard guitar have?"),
    _none("g-chord", MUSIC, "What is a chord in music theory?"),
    _none("g-sql", OPS, "Write a SQL query that selects all users older than 30."),
    _none("g-primes", MONEY, "Is 97 a prime number? Explain briefly."),
    _none("g-ok", HOME, "Okay, great."),
    _none("g-recipe", SHOP, "How do I make pancakes?"),
    _fits("g-aapl", MONEY, "What is Apple's stock trading at right now?", "get_stock_quote"),
    _fits("g-eur", MONEY, "How much is 250 euros in Japanese yen?", "convert_currency"),
    _fits("g-pct", MONEY, "What is 17.5% of 2380?", "calculate"),
    _fits("g-oslo", MONEY, "Is it raining in Oslo at the moment?", "get_weather"),
    _fits("g-warm", HOME, "Make it warmer in the living room, set it to 23 degrees.", "set_thermostat"),
    _fits("g-light", HOME, "Turn off the kitchen light.", "set_light"),
    _fits("g-timer", HOME, "Start a 15 minute timer for the pasta.", "set_timer"),
    _fits("g-song", HOME, "Play Bohemian Rhapsody by Queen.", "play_song"),
    _fits("g-restart", OPS, "Restart the auth service in staging.", "restart_service"),
    _fits("g-scale", OPS, "Scale the web deployment to 5 replicas.", "scale_deployment"),
    _fits("g-logs", OPS, "Show me the recent logs of the payments service.", "get_logs"),
    _fits("g-flight", TRIP, "Find flights from Berlin to Rome on 2026-03-14.", "search_flights"),
    _fits("g-hotel", TRIP, "Book a hotel in Kyoto from 2026-04-01 to 2026-04-05.", "book_hotel"),
    _fits("g-walk", TRIP, "How do I walk from the Louvre to the Eiffel Tower?", "get_directions"),
    _fits("g-order", SHOP, "Where is my order 88231?", "track_order"),
    _fits("g-phones", SHOP, "Find me wireless headphones.", "search_products"),
    _fits("g-oz", SHOP, "How many ounces are in 3 kilograms?", "convert_units"),
    _fits("g-cal", WORK, "What's on my calendar on 2026-02-03?", "list_events"),
    _fits("g-mail", WORK, "Email bob@example.com that I'm running ten minutes late.", "send_email"),
    _fits("g-run", LIFE, "Log a 30-minute run for me.", "log_workout"),
    _fits("g-es", LIFE, "Translate 'good morning' into Spanish.", "translate_text"),
    _fits("g-vol", MUSIC, "Turn the volume down to 20.", "set_volume"),
]
