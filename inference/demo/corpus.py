"""The demo model's training text, written by the project.

Every sentence here comes from templates in this file, so the corpus ships with Levee under its own
licence and nothing is downloaded. It is small on purpose: short English chats in which the
assistant greets, explains what Levee is, does small sums, states a few plain facts, and admits what
a tiny demo model cannot do. That is enough for a few-minute training run to produce readable
replies in the web chat; it is not meant to make the model knowledgeable.

`conversations(n, seed)` is deterministic: the same arguments give the same list.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

Message = dict[str, str]
Turn = tuple[str, str]  # (user, assistant)

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                "eighteen", "nineteen", "twenty"]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are Levee's demo model. Answer briefly.",
    "You are a friendly assistant. Keep answers short.",
    "Answer the user's questions politely.",
]


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _pick(rng: random.Random, options: list[str]) -> str:
    return options[rng.randrange(len(options))]


def _vary_user_text(rng: random.Random, text: str) -> str:
    """Real users type carelessly: lower case, no final punctuation, stray spaces."""
    roll = rng.random()
    if roll < 0.15:
        text = text.lower()
    elif roll < 0.25:
        text = text.rstrip("?.!")
    if rng.random() < 0.05:
        text = text + " "
    return text


# --- topics: each returns one (user, assistant) turn -----------------------------------------------


def greeting(rng: random.Random) -> Turn:
    user = _pick(rng, ["Hello", "Hello!", "Hi", "Hi!", "Hey", "Hey there", "Hi there!", "Good morning",
                       "Good afternoon", "Good evening", "Greetings", "Hello there", "Howdy",
                       "Hello, how are you?", "Hi, how are you doing?", "How are you?"])
    if "how are you" in user.lower():
        reply = _pick(rng, [
            "I am doing well, thank you for asking! How can I help you today?",
            "I am fine, thanks! What would you like to talk about?",
            "Very well, thank you. What can I do for you?",
        ])
    else:
        opener = _pick(rng, ["Hello!", "Hi there!", "Hello, nice to meet you!", "Hi!", "Hey!",
                             "Good to see you!"])
        if user.lower().startswith("good "):
            opener = user.rstrip("!") + "!"
        follow = _pick(rng, ["How can I help you today?", "What would you like to talk about?",
                             "What can I do for you?", "Ask me anything about Levee.",
                             "I am Levee's demo model. How can I help?"])
        reply = f"{opener} {follow}"
    return user, reply


LEVEE_QUESTIONS = ["What is Levee?", "Tell me about Levee.", "What does Levee do?", "Explain Levee.",
                   "What is Levee for?", "Can you describe Levee?", "What is this platform?",
                   "Why is it called Levee?"]

LEVEE_FACTS = [
    "Levee is a self-hostable platform for serving a large language model.",
    "Levee lets people chat with a language model in a web page.",
    "Developers can call Levee through an API that works like the OpenAI API.",
    "API calls are billed per token at published prices.",
    "GPU workers run a mixture of experts model in the style of DeepSeek.",
    "Levee is built to keep serving its users during a flood of traffic.",
    "When signups are busy, registered users can still log in.",
    "A levee is a wall of earth that keeps a river from flooding the land.",
    "You can run Levee on your own machines.",
    "The web platform is written with Django, and the workers use Celery and Redis.",
]


def about_levee(rng: random.Random) -> Turn:
    user = _pick(rng, LEVEE_QUESTIONS)
    if user.startswith("Why"):
        reply = ("A levee is a wall that holds back a flooding river. "
                 "Levee the platform holds back floods of traffic so the service keeps running.")
        return user, reply
    first = LEVEE_FACTS[rng.randrange(2)]  # always lead with what it is
    rest = rng.sample(LEVEE_FACTS[2:], k=rng.randint(1, 2))
    return user, " ".join([first, *rest])


def about_me(rng: random.Random) -> Turn:
    user = _pick(rng, ["Who are you?", "What are you?", "What is your name?", "Are you a person?",
                       "What can you do?", "Who made you?", "How big are you?", "Are you smart?"])
    replies = {
        "Who are you?": "I am the demo model of Levee, a tiny language model trained in a few minutes.",
        "What are you?": "I am a very small mixture of experts language model that ships with Levee.",
        "What is your name?": "I do not have a name. I am the demo model that comes with Levee.",
        "Are you a person?": "No, I am a small language model running on Levee.",
        "What can you do?": ("I can say hello, tell you about Levee, add and subtract small numbers, "
                             "and answer a few simple questions."),
        "Who made you?": "The Levee project trained me on short example chats that it wrote itself.",
        "How big are you?": "I am tiny. I have only a few million parameters and a few layers.",
        "Are you smart?": "Not very. I am a tiny demo model, so please keep your questions simple.",
    }
    return user, replies[user]


def arithmetic(rng: random.Random) -> Turn:
    op = rng.choice(["+", "-", "*"])
    if op == "+":
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        result, word = a + b, "plus"
    elif op == "-":
        a = rng.randint(0, 20)
        b = rng.randint(0, a)
        result, word = a - b, "minus"
    else:
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        result, word = a * b, "times"
    style = rng.randrange(4)
    if style == 0:
        user = f"What is {a} {word} {b}?"
    elif style == 1:
        user = f"What is {a} {op} {b}?"
    elif style == 2:
        user = f"{a} {op} {b} = ?"
    else:
        user = f"Can you compute {a} {word} {b}?"
    reply = _pick(rng, [f"{a} {word} {b} is {result}.", f"The answer is {result}.",
                        f"{a} {op} {b} = {result}."])
    return user, reply


def counting(rng: random.Random) -> Turn:
    n = rng.randint(3, 10)
    if rng.random() < 0.5:
        user = f"Count to {NUMBER_WORDS[n]}."
        words = [w.capitalize() if i == 0 else w for i, w in enumerate(NUMBER_WORDS[1:n + 1])]
        return user, ", ".join(words) + "."
    user = f"Count from 1 to {n}."
    return user, ", ".join(str(i) for i in range(1, n + 1)) + "."


DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
COLORS = {"the sky": "blue", "grass": "green", "snow": "white", "a banana": "yellow",
          "a lemon": "yellow", "coal": "black", "a tomato": "red", "an orange": "orange",
          "a strawberry": "red", "a carrot": "orange", "milk": "white", "a leaf": "green"}
SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "owl": "hoot",
          "frog": "ribbit", "horse": "neigh"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "day": "night",
             "happy": "sad", "open": "closed", "early": "late", "light": "dark", "full": "empty",
             "old": "new", "loud": "quiet"}
PLAIN_FACTS = [
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many months are in a year?", "There are twelve months in a year."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many legs does a dog have?", "A dog has four legs."),
    ("What do bees make?", "Bees make honey."),
    ("Where do fish live?", "Fish live in water, in rivers, lakes and the sea."),
    ("What is ice?", "Ice is frozen water."),
    ("Why do we sleep?", "We sleep so that the body and the mind can rest."),
    ("What is a river?", "A river is water that flows across the land to a lake or the sea."),
    ("What is a token?", "A token is a small piece of text, like a word or part of a word."),
    ("What is a GPU?", "A GPU is a chip that does many calculations at once. Levee runs its model on GPUs."),
    ("What is an API?", "An API is a way for programs to talk to each other. Levee has one for developers."),
]


def simple_fact(rng: random.Random) -> Turn:
    kind = rng.randrange(6)
    if kind == 0:
        i = rng.randrange(7)
        if rng.random() < 0.5:
            return f"What day comes after {DAYS[i]}?", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}."
        return f"What day comes before {DAYS[i]}?", f"{DAYS[(i - 1) % 7]} comes before {DAYS[i]}."
    if kind == 1:
        i = rng.randrange(12)
        return f"What month comes after {MONTHS[i]}?", f"{MONTHS[(i + 1) % 12]} comes after {MONTHS[i]}."
    if kind == 2:
        thing, color = rng.choice(sorted(COLORS.items()))
        reply = f"{thing[0].upper()}{thing[1:]} is {color}."
        return f"What color is {thing}?", reply
    if kind == 3:
        animal, sound = rng.choice(sorted(SOUNDS.items()))
        return f"What does a {animal} say?", f"A {animal} says {sound}."
    if kind == 4:
        word, opposite = rng.choice(sorted(OPPOSITES.items()))
        if rng.random() < 0.5:
            word, opposite = opposite, word
        return f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."
    return rng.choice(PLAIN_FACTS)


UNKNOWN_TOPICS = ["quantum physics", "the stock market", "the history of Rome", "black holes",
                  "the weather tomorrow", "French grammar", "how to cook rice", "the meaning of life",
                  "chess openings", "the capital of Mars", "a good movie", "poetry", "medicine",
                  "the news today", "how engines work", "music theory", "the tallest mountain"]


def unknown(rng: random.Random) -> Turn:
    topic = _pick(rng, UNKNOWN_TOPICS)
    user = _pick(rng, [f"Tell me about {topic}.", f"Can you explain {topic}?", f"What do you know about {topic}?",
                       f"I have a question about {topic}.", f"Help me with {topic}."])
    reply = _pick(rng, [
        f"I am only a tiny demo model, so I do not know much about {topic}. "
        "I can tell you about Levee or do a small sum.",
        f"Sorry, {topic} is too hard for a small demo model like me. Try asking me about Levee.",
        "I do not know the answer to that. I am a very small model that ships with Levee for testing.",
    ])
    return user, reply


def thanks_or_bye(rng: random.Random) -> Turn:
    if rng.random() < 0.5:
        user = _pick(rng, ["Thank you", "Thanks!", "Thanks a lot.", "Thank you very much!", "Great, thanks."])
        return user, _pick(rng, ["You are welcome!", "Happy to help!", "Any time. Is there anything else?",
                                 "You are welcome. Have a nice day!"])
    user = _pick(rng, ["Bye", "Goodbye!", "See you later.", "Good night", "That is all for now."])
    return user, _pick(rng, ["Goodbye! Have a nice day.", "See you soon!", "Bye! Come back any time.",
                             "Good night, and thank you for trying Levee."])


# A wider vocabulary than the chats above need, so the tokenizer and the model meet ordinary words.
NOUNS = """apple baker bird boat book bottle bridge brother cake camera candle car castle cat chair
child city cloud coat cook cup doctor door dragon dream farmer field fire flower forest fox friend
garden gate girl boy hill horse house island key king kitten lake lamp letter lion map market moon
mountain mouse nurse ocean painter pencil pilot planet queen rabbit rain road robot sailor school
shadow ship singer sister soldier star station stone storm street sun table teacher tiger tower
town train tree village window winter wolf writer library bakery harbor meadow valley desert
river engineer student musician gardener neighbor grandmother grandfather puppy turtle whale
owl penguin violin drum kite basket lantern blanket mirror ladder compass clock umbrella bicycle
helicopter submarine volcano waterfall glacier canyon orchard vineyard lighthouse windmill
telescope microscope keyboard notebook envelope suitcase backpack sandwich pancake biscuit
pumpkin cucumber potato onion pepper cherry peach melon walnut mushroom squirrel hedgehog beaver
badger dolphin octopus lobster giraffe elephant zebra kangaroo camel parrot pigeon sparrow eagle
butterfly ladybug spider beetle scarecrow snowman pirate wizard knight princess merchant
carpenter fisherman librarian astronaut detective inventor juggler shepherd blacksmith potter
tailor courier""".split()
NAMES = """Ada Ben Clara Dev Elena Felix Grace Hugo Iris Jonas Kira Leo Maya Nils Olga Pablo Quinn
Rosa Sami Tara Umar Vera Wren Yara Zane Amir Beatrix Chen Dora Emil Farah Goran Hana Ivan Jun
Lena Marco Nora Omar Priya Rafael Sofia Tomas Ulla Viktor Wanda Xavier Yusuf Zora""".split()
ADJECTIVES = """quiet brave tiny huge old young kind clever sleepy happy curious gentle bright dark
shiny rusty wooden golden silver green purple warm cold busy lazy careful noisy proud shy strong
small tall patient friendly lonely hungry cheerful wise funny calm wild polite sparkling
muddy fuzzy striped spotted ancient modern enormous delicate fearless grumpy generous nervous
playful restless silent stubborn thoughtful clumsy graceful mysterious ordinary peculiar""".split()
VERBS = """found built painted carried opened visited watched followed helped cleaned fixed drew
lifted pushed pulled counted washed baked planted found borrowed shared wrapped tied sold bought
read wrote hid discovered collected measured repaired invented delivered climbed crossed
explored guarded launched noticed rescued returned sketched tasted traded welcomed""".split()
PLACES = """near the river|under the old bridge|in the busy market|on top of the hill|behind the
school|inside the castle|at the edge of the forest|by the quiet lake|in a small village|
next to the train station|in the middle of the desert|on a sunny island""".replace("\n", " ").split("|")
TIMES = ["One morning", "Late at night", "Last winter", "On a rainy day", "Long ago", "Every Sunday",
         "After lunch", "Before sunrise", "In the summer", "Yesterday"]
ENDINGS = ["Everyone was happy.", "Then they went home.", "It was a good day.",
           "They laughed about it for years.", "Nobody forgot that day.", "And that is the end of the story."]


def _story_sentence(rng: random.Random) -> str:
    if rng.random() < 0.3:
        subject = rng.choice(NAMES)
    else:
        subject = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    place = rng.choice(PLACES).strip()
    obj = _a(f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}")
    return f"{rng.choice(TIMES)}, {subject} {rng.choice(VERBS)} {obj} {place}."


def story(rng: random.Random) -> Turn:
    user = _pick(rng, ["Tell me a short story.", "Tell me a story.", "Can you tell me a story?",
                       "Write a tiny story.", "Tell me a bedtime story."])
    sentences = [_story_sentence(rng) for _ in range(rng.randint(1, 2))]
    return user, " ".join([*sentences, rng.choice(ENDINGS)])


def repeat(rng: random.Random) -> Turn:
    words = [rng.choice(ADJECTIVES), rng.choice(NOUNS)]
    phrase = f"the {words[0]} {words[1]}" if rng.random() < 0.5 else _story_sentence(rng)
    user = _pick(rng, [f"Repeat after me: {phrase}", f"Say this back: {phrase}", f"Please repeat: {phrase}"])
    return user, phrase


def describe(rng: random.Random) -> Turn:
    noun = rng.choice(NOUNS)
    adjectives = rng.sample(ADJECTIVES, k=2)
    user = _pick(rng, [f"Describe {_a(noun)}.", f"Say something about {_a(noun)}.", f"Imagine {_a(noun)}."])
    where = rng.choice(PLACES).strip()
    return user, f"I picture {_a(adjectives[0] + ' ' + noun)}. It is {adjectives[1]} and it lives {where}."


# Weights favour the replies the demo is judged by: a greeting and "What is Levee?".
TOPICS: list[tuple[Callable[[random.Random], Turn], int]] = [
    (greeting, 5), (about_levee, 5), (about_me, 3), (arithmetic, 4), (counting, 1),
    (simple_fact, 4), (unknown, 2), (thanks_or_bye, 2), (story, 2), (repeat, 1),
    (describe, 1),
]


def _turn(rng: random.Random) -> Turn:
    funcs = [func for func, _ in TOPICS]
    weights = [weight for _, weight in TOPICS]
    return rng.choices(funcs, weights=weights)[0](rng)


def conversation(rng: random.Random) -> list[Message]:
    messages: list[Message] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": _pick(rng, SYSTEM_PROMPTS)})
    n_turns = rng.choices([1, 2, 3], weights=[6, 3, 1])[0]
    for i in range(n_turns):
        user, reply = greeting(rng) if i == 0 and rng.random() < 0.2 else _turn(rng)
        messages.append({"role": "user", "content": _vary_user_text(rng, user)})
        messages.append({"role": "assistant", "content": reply})
    return messages


def conversations(n: int, seed: int = 0) -> list[list[Message]]:
    rng = random.Random(seed)
    return [conversation(rng) for _ in range(n)]


# --- tools, reasoning and fill-in-the-middle ----------------------------------------------------------
# Small shares of the corpus that teach the demo model the shapes the API exposes: calling a function
# (DeepSeek-V3.1's tool tokens, through the chat template), answering from a tool's result, thinking
# in `<think>…</think>` before an answer, and filling a hole between a prefix and a suffix.

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "add_numbers", "description": "Add two whole numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Get the local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
]
CITIES = ["Paris", "Rome", "Tokyo", "Lima", "Oslo", "Cairo", "Berlin", "Madrid", "Sydney", "Toronto", "Hangzhou"]
WEATHER = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy"]


def _call(name: str, arguments: dict[str, Any], n: int) -> dict[str, Any]:
    return {"id": f"call_{n}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, separators=(",", ":"))}}  # compact, as the grammar writes


def tool_conversation(rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One chat with tools offered: a call (or two), the results, the answer from them; or a turn
    that needs no tool, answered directly."""
    tools = rng.sample(TOOLS, k=rng.randint(1, len(TOOLS)))
    names = {t["function"]["name"] for t in tools}
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": _pick(rng, SYSTEM_PROMPTS)})
    kind = rng.choice(sorted(names) + ["none"])
    if kind == "get_weather":
        cities = rng.sample(CITIES, k=rng.choice([1, 1, 2]))
        user = (f"What is the weather in {cities[0]}?" if len(cities) == 1
                else f"What is the weather in {cities[0]} and in {cities[1]}?")
        calls = [_call("get_weather", {"city": c}, i) for i, c in enumerate(cities)]
        results = [(c, rng.choice(WEATHER), rng.randint(-5, 35)) for c in cities]
        outputs = [json.dumps({"city": c, "weather": w, "temperature_c": t}) for c, w, t in results]
        answer = " ".join(f"It is {w} in {c}, {t} degrees." for c, w, t in results)
    elif kind == "add_numbers":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        user = _pick(rng, [f"Use the tool to add {a} and {b}.", f"What is {a} plus {b}? Use add_numbers.",
                           f"Add {a} and {b} for me."])
        calls = [_call("add_numbers", {"a": a, "b": b}, 0)]
        outputs = [str(a + b)]
        answer = f"{a} plus {b} is {a + b}."
    elif kind == "get_time":
        city = rng.choice(CITIES)
        hour, minute = rng.randint(0, 23), rng.choice([0, 15, 30, 45])
        user = _pick(rng, [f"What time is it in {city}?", f"Tell me the time in {city}."])
        calls = [_call("get_time", {"city": city}, 0)]
        outputs = [json.dumps({"city": city, "time": f"{hour:02d}:{minute:02d}"})]
        answer = f"It is {hour:02d}:{minute:02d} in {city}."
    else:
        user, reply = _turn(rng)
        messages += [{"role": "user", "content": _vary_user_text(rng, user)}, {"role": "assistant", "content": reply}]
        return messages, tools
    messages.append({"role": "user", "content": _vary_user_text(rng, user)})
    messages.append({"role": "assistant", "content": "", "tool_calls": calls})
    for call, output in zip(calls, outputs, strict=True):
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": output})
    messages.append({"role": "assistant", "content": answer})
    return messages, tools


def tool_conversations(n: int, seed: int = 0) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    rng = random.Random(seed)
    return [tool_conversation(rng) for _ in range(n)]


def reasoning_conversation(rng: random.Random) -> list[Message]:
    if rng.random() < 0.25:
        return json_conversation(rng)
    """A one-turn chat whose answer is preceded by a short thought, as a reasoner writes it: the
    template opens `<think>` in the generation prompt, so the content here starts inside it."""
    user, reply = _turn(rng)
    thought = _pick(rng, [f"The user asks: {user} I should answer briefly.",
                          f"The question is: {user} Let me answer it in one or two sentences.",
                          f"The user wrote: {user} I know a short answer to this."])
    return [{"role": "user", "content": _vary_user_text(rng, user)},
            {"role": "assistant", "content": f"<think>\n{thought}\n</think>\n\n{reply}"}]


def json_conversation(rng: random.Random) -> list[Message]:
    """A one-turn chat answered as a small JSON object (what response_format json_object asks for)."""
    user, reply = _turn(rng)
    ask = _pick(rng, ["Answer in JSON.", "Reply with a JSON object.", "Give the answer as json."])
    key = _pick(rng, ["answer", "reply", "text"])
    return [{"role": "user", "content": f"{user} {ask}"}, {"role": "assistant", "content": json.dumps({key: reply})}]


def reasoning_conversations(n: int, seed: int = 0) -> list[list[Message]]:
    rng = random.Random(seed)
    return [reasoning_conversation(rng) for _ in range(n)]


CODE_SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "def greet(name):\n    return f\"Hello, {name}!\"\n",
    "def square(x):\n    return x * x\n",
    "def is_even(n):\n    return n % 2 == 0\n",
    "for i in range(10):\n    print(i)\n",
    "def count_to(n):\n    return list(range(1, n + 1))\n",
    "import json\n\ndata = json.loads(text)\nprint(data[\"name\"])\n",
    "def maximum(items):\n    best = items[0]\n    for item in items:\n        if item > best:\n            best = item\n    return best\n",
]


def fim_document(rng: random.Random) -> tuple[str, str, str]:
    """(prefix, middle, suffix) cut from a reply or a code snippet at word or line boundaries."""
    if rng.random() < 0.5:
        text = rng.choice(CODE_SNIPPETS)
        lines = text.splitlines(keepends=True)
        i = rng.randrange(len(lines))
        j = rng.randint(i + 1, len(lines))
        return "".join(lines[:i]), "".join(lines[i:j]), "".join(lines[j:])
    _, text = _turn(rng)
    words = text.split(" ")
    if len(words) < 3:
        return "", text, ""
    i = rng.randrange(1, len(words) - 1)
    j = rng.randint(i + 1, len(words))
    return " ".join(words[:i]) + " ", " ".join(words[i:j]), (" " + " ".join(words[j:])) if j < len(words) else ""


def fim_documents(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    return [fim_document(rng) for _ in range(n)]


def texts(convs: list[list[Message]]) -> Iterator[str]:
    """Message contents alone, for training the tokenizer."""
    for conv in convs:
        for message in conv:
            yield message["content"]


if __name__ == "__main__":
    for conv in conversations(8, seed=1):
        for m in conv:
            print(f"{m['role']:>9}: {m['content']}")
        print()
