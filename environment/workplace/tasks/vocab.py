"""Free-text material for generated tasks (our own wording): subjects, bodies, names, new values.

Everything a ground truth takes from the *sandbox* (ids, addresses, existing subjects and names) is
read through the tools in base.Sandbox; these lists only supply new text a user would dictate.
"""

from __future__ import annotations

EMAIL_SUBJECTS = (
    "Quick question",
    "Catch up soon?",
    "Agenda for next week",
    "Budget review",
    "Follow-up on today's call",
    "Design feedback",
    "Sprint retrospective notes",
    "Travel plans",
    "Quarterly goals",
    "Hiring update",
    "Customer escalation",
    "Release checklist",
    "Office move",
    "Training schedule",
    "Thank you",
    "Invoice question",
    "Vendor contract",
    "Roadmap draft",
)

EMAIL_BODIES = (
    "Can you send me your availability for next week?",
    "Please review the attached draft before Friday.",
    "Thanks for your help on this - much appreciated.",
    "Let's sync on this tomorrow morning.",
    "Could you share the latest numbers when you get a chance?",
    "I have moved our meeting; please check your calendar.",
    "The client signed off on the proposal.",
    "Can you own this one?",
    "Please send me a short status update by end of day.",
    "Reminder: the deadline is next Monday.",
    "Great work on the launch this week!",
    "We need to discuss the budget before the board meeting.",
    "Could you loop in the design team?",
    "I will be out of office on Friday.",
)

REPLY_BODIES = (
    "Thanks for the update - I will get back to you tomorrow.",
    "Got it, thank you!",
    "Thanks, this looks good to me.",
    "Noted - let's discuss at our next meeting.",
    "Thanks! Can you send me more details?",
    "Sounds good, please go ahead.",
    "I'll take a look and reply by Friday.",
    "Thanks for letting me know.",
)

EVENT_NAMES = (
    "Quarterly Sales Review",
    "Budget Sync",
    "Design Critique",
    "Hiring Committee",
    "Roadmap Planning",
    "Customer Feedback Review",
    "Security Briefing",
    "Team Lunch",
    "Product Demo",
    "Sprint Planning",
    "Architecture Review",
    "Marketing Brainstorm",
    "Vendor Call",
    "Onboarding Session",
    "Release Retrospective",
    "Strategy Offsite Prep",
    "one-on-one",
    "Data Review",
)

TASK_NAMES = (
    "Add dark mode toggle",
    "Refactor payment service",
    "Design onboarding illustrations",
    "Fix login redirect bug",
    "Write API documentation",
    "Set up error monitoring",
    "Optimize image loading",
    "Create style guide",
    "Migrate database to new cluster",
    "Implement password reset flow",
    "Update pricing page",
    "Add unit tests for checkout",
    "Redesign settings screen",
    "Improve search ranking",
    "Build export to CSV",
    "Audit accessibility of forms",
    "Add rate limiting to API",
    "Prototype mobile navigation",
    "Clean up unused endpoints",
    "Localize landing page",
)

FIRST_NAMES = (
    "Alex",
    "Jordan",
    "Morgan",
    "Riley",
    "Casey",
    "Taylor",
    "Jamie",
    "Avery",
    "Peyton",
    "Quinn",
    "Rowan",
    "Skyler",
    "Harper",
    "Elliot",
    "Reese",
    "Dakota",
    "Emerson",
    "Finley",
    "Hayden",
    "Sasha",
)
LAST_NAMES = (
    "Okafor",
    "Lindqvist",
    "Moreno",
    "Kowalski",
    "Nakamura",
    "Haddad",
    "Fischer",
    "Delgado",
    "Novak",
    "Brennan",
    "Castillo",
    "Ibsen",
    "Vargas",
    "Ahmed",
    "Sorensen",
    "Whitaker",
    "Romano",
    "Tanaka",
)
COMPANIES = (
    "brightpath",
    "nimbusworks",
    "redwoodlabs",
    "silverline",
    "quantaflow",
    "bluepeak",
    "ironclad",
    "greenfield",
    "northstar",
    "velocity",
)

METRICS = {
    "total_visits": ("total visits", "the number of visits", "site visits"),
    "session_duration_seconds": ("average session duration", "the average session length"),
    "user_engaged": ("engaged users", "the number of engaged users", "user engagement"),
    "visits_direct": ("direct visits", "visits from direct traffic"),
    "visits_referral": ("referral visits", "visits from referrals"),
    "visits_search_engine": ("search engine visits", "visits from search engines"),
    "visits_social_media": ("social media visits", "visits from social media"),
}
SOURCES = {
    "visits_direct": "direct",
    "visits_referral": "referral",
    "visits_search_engine": "search engine",
    "visits_social_media": "social media",
}
PLOT_TYPES = {
    "bar": ("bar chart", "bar graph"),
    "line": ("line chart", "line graph", "line plot"),
    "scatter": ("scatter plot", "scatter chart"),
    "histogram": ("histogram",),
}
STATUS_WORDS = {
    "Qualified": "qualified",
    "Won": "won",
    "Lost": "lost",
    "Lead": "a lead",
    "Proposal": "in the proposal stage",
}
